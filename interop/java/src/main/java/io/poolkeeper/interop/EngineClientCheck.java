package io.poolkeeper.interop;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.logging.ConsoleHandler;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogManager;
import java.util.logging.SimpleFormatter;

import javax.net.ssl.KeyManager;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManager;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;

import org.ovirt.vdsm.jsonrpc.client.ClientConnectionException;
import org.ovirt.vdsm.jsonrpc.client.JsonRpcClient;
import org.ovirt.vdsm.jsonrpc.client.JsonRpcRequest;
import org.ovirt.vdsm.jsonrpc.client.JsonRpcResponse;
import org.ovirt.vdsm.jsonrpc.client.RequestBuilder;
import org.ovirt.vdsm.jsonrpc.client.internal.ClientPolicy;
import org.ovirt.vdsm.jsonrpc.client.internal.ResponseWorker;
import org.ovirt.vdsm.jsonrpc.client.reactors.ManagerProvider;
import org.ovirt.vdsm.jsonrpc.client.reactors.Reactor;
import org.ovirt.vdsm.jsonrpc.client.reactors.ReactorClient;
import org.ovirt.vdsm.jsonrpc.client.reactors.ReactorFactory;
import org.ovirt.vdsm.jsonrpc.client.reactors.ReactorType;
import org.ovirt.vdsm.jsonrpc.client.reactors.stomp.StompClientPolicy;
import org.slf4j.MDC;

/**
 * Drives a VDSM-compatible server with oVirt's engine-side client library
 * (vdsm-jsonrpc-java), building the client exactly as ovirt-engine's
 * JsonRpcUtils.createStompClient does, and issuing the pool calls the engine
 * issues (same method names, same parameter names and types as
 * JsonRpcVdsServer / JsonRpcIIrsServer).
 *
 * One JSON line per call goes to stdout; the library's own log goes to stderr.
 * Exit codes: 0 every check passed, 1 a check failed, 2 usage error,
 * 3 connection failure or overall timeout.
 */
public final class EngineClientCheck {
    static final String REQUEST_QUEUE = "jms.topic.vdsm_requests";
    static final String RESPONSE_QUEUE = "jms.topic.vdsm_responses";
    static final String EVENT_QUEUE = "jms.queue.events";

    static final int EXIT_OK = 0;
    static final int EXIT_CHECK_FAILED = 1;
    static final int EXIT_USAGE = 2;
    static final int EXIT_CONNECTION = 3;

    private static final ObjectMapper MAPPER = new ObjectMapper();
    private static final PrintStream OUT = new PrintStream(System.out, true, StandardCharsets.UTF_8);

    // --- options ---
    String host = "127.0.0.1";
    int port = 54321;
    boolean insecure;
    Path ca;
    Path cert;
    Path key;
    String pool;
    int hostId = 1;
    String scsiKey;
    String master;
    int masterVersion = 1;
    final Map<String, String> domains = new LinkedHashMap<>();
    String badCall = "unknown-pool";
    String unknownPool;
    final List<Integer> expectErrorCodes = new ArrayList<>();
    boolean checkResults = true;
    int overallTimeoutSec = 30;
    int callTimeoutMs = 10_000;
    int connectTimeoutMs = 5_000;
    int retries = 0;
    int heartbeatMs = 30_000;
    String identifier;
    String logLevel = "warn";
    int pauseMs = 0;
    String correlationId;
    String tlsProtocol = "TLS"; // the engine's VdsmSSLProtocol default

    private int failures;
    private ReactorClient reactorClient;

    public static void main(String[] args) {
        EngineClientCheck check = new EngineClientCheck();
        try {
            check.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("engine-client-check: " + e.getMessage());
            System.err.println(usage());
            System.exit(EXIT_USAGE);
        }
        configureLogging(check.logLevel);
        if (check.correlationId != null) {
            // the engine's flows put this in the MDC; the library copies it into each SEND
            MDC.put("ovirtCorrelationId", check.correlationId);
        }
        check.startWatchdog();
        int rc;
        try {
            rc = check.run();
        } catch (Throwable t) {
            fail("engine-client-check: unexpected " + t);
            rc = EXIT_CONNECTION;
        }
        OUT.flush();
        System.err.flush();
        Runtime.getRuntime().halt(rc);
    }

    /** The library's log (through slf4j-jdk14) goes to stderr at the level asked for. */
    static void configureLogging(String level) {
        Level l = switch (level.toLowerCase()) {
            case "trace" -> Level.FINEST;
            case "debug" -> Level.FINE;
            case "info" -> Level.INFO;
            case "error" -> Level.SEVERE;
            case "off" -> Level.OFF;
            default -> Level.WARNING;
        };
        System.setProperty("java.util.logging.SimpleFormatter.format",
                "%1$tT.%1$tL %4$s [%3$s] %5$s%6$s%n");
        java.util.logging.Logger root = LogManager.getLogManager().getLogger("");
        for (Handler h : root.getHandlers()) {
            root.removeHandler(h);
        }
        ConsoleHandler h = new ConsoleHandler(); // stderr
        h.setFormatter(new SimpleFormatter());
        h.setLevel(l);
        root.addHandler(h);
        root.setLevel(l);
    }

    static String usage() {
        return String.join("\n",
                "usage: EngineClientCheck --host H --port P (--insecure | --ca ca.pem --cert client.pem --key client-key.pem)",
                "         --pool UUID --master SDUUID [--master-version N] [--host-id N] [--scsi-key S]",
                "         [--domain SDUUID=active ...]",
                "         [--bad-call unknown-pool|wrong-master] [--unknown-pool UUID] [--expect-error-code N[,N...]]",
                "         [--no-result-checks] [--timeout SECONDS] [--call-timeout-ms MS] [--connect-timeout-ms MS]",
                "         [--retries N] [--heartbeat-ms MS] [--identifier HOST] [--log-level trace|debug|info|warn|error]",
                "         [--pause-ms MS (idle before the disconnect call)] [--correlation-id ID (MDC ovirtCorrelationId)]",
                "         [--tls-protocol TLS|TLSv1.2|TLSv1.3 (SSLContext protocol, as engine's VdsmSSLProtocol; default TLS)]",
                "Calls in order: StoragePool.connect, StoragePool.getInfo, Host.getStorageRepoStats,",
                "a call that must fail with a VDSM error code (default: StoragePool.getInfo of an unknown pool, 309;",
                "wrong-master: StoragePool.connect naming a master that is not the pool's, 304 or 324),",
                "then StoragePool.disconnect. One JSON line per call on stdout.",
                "Exit 0 all checks passed, 1 a check failed, 2 usage, 3 connection failure/timeout.");
    }

    void parse(String[] args) {
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            switch (a) {
                case "--host" -> host = value(args, ++i, a);
                case "--port" -> port = intValue(args, ++i, a);
                case "--insecure" -> insecure = true;
                case "--ca" -> ca = Path.of(value(args, ++i, a));
                case "--cert" -> cert = Path.of(value(args, ++i, a));
                case "--key" -> key = Path.of(value(args, ++i, a));
                case "--pool" -> pool = value(args, ++i, a);
                case "--host-id" -> hostId = intValue(args, ++i, a);
                case "--scsi-key" -> scsiKey = value(args, ++i, a);
                case "--master" -> master = value(args, ++i, a);
                case "--master-version" -> masterVersion = intValue(args, ++i, a);
                case "--domain" -> {
                    String d = value(args, ++i, a);
                    int eq = d.indexOf('=');
                    if (eq <= 0 || eq == d.length() - 1) {
                        throw new IllegalArgumentException("--domain wants SDUUID=status, got '" + d + "'");
                    }
                    domains.put(d.substring(0, eq), d.substring(eq + 1));
                }
                case "--bad-call" -> {
                    badCall = value(args, ++i, a);
                    if (!badCall.equals("unknown-pool") && !badCall.equals("wrong-master")) {
                        throw new IllegalArgumentException("--bad-call is unknown-pool or wrong-master");
                    }
                }
                case "--unknown-pool" -> unknownPool = value(args, ++i, a);
                case "--expect-error-code" -> {
                    for (String c : value(args, ++i, a).split(",")) {
                        try {
                            expectErrorCodes.add(Integer.parseInt(c.trim()));
                        } catch (NumberFormatException e) {
                            throw new IllegalArgumentException("--expect-error-code wants integers, got '" + c + "'");
                        }
                    }
                }
                case "--no-result-checks" -> checkResults = false;
                case "--timeout" -> overallTimeoutSec = intValue(args, ++i, a);
                case "--call-timeout-ms" -> callTimeoutMs = intValue(args, ++i, a);
                case "--connect-timeout-ms" -> connectTimeoutMs = intValue(args, ++i, a);
                case "--retries" -> retries = intValue(args, ++i, a);
                case "--heartbeat-ms" -> heartbeatMs = intValue(args, ++i, a);
                case "--identifier" -> identifier = value(args, ++i, a);
                case "--log-level" -> logLevel = value(args, ++i, a);
                case "--pause-ms" -> pauseMs = intValue(args, ++i, a);
                case "--correlation-id" -> correlationId = value(args, ++i, a);
                case "--tls-protocol" -> tlsProtocol = value(args, ++i, a);
                case "-h", "--help" -> {
                    OUT.println(usage());
                    System.exit(EXIT_OK);
                }
                default -> throw new IllegalArgumentException("unknown argument '" + a + "'");
            }
        }
        if (pool == null) {
            throw new IllegalArgumentException("--pool is required");
        }
        if (master == null) {
            throw new IllegalArgumentException("--master is required");
        }
        if (insecure == (ca != null || cert != null || key != null)) {
            throw new IllegalArgumentException("give either --insecure or all of --ca, --cert, --key");
        }
        if (!insecure && (ca == null || cert == null || key == null)) {
            throw new IllegalArgumentException("TLS needs all of --ca, --cert, --key");
        }
        if (scsiKey == null) {
            scsiKey = pool; // what the engine passes
        }
        if (unknownPool == null) {
            unknownPool = UUID.randomUUID().toString();
        }
        if (expectErrorCodes.isEmpty()) {
            if (badCall.equals("unknown-pool")) {
                expectErrorCodes.add(309); // StoragePoolUnknown
            } else {
                expectErrorCodes.add(304); // StoragePoolMasterNotFound
                expectErrorCodes.add(324); // StoragePoolWrongMaster
            }
        }
    }

    private static String value(String[] args, int i, String opt) {
        if (i >= args.length) {
            throw new IllegalArgumentException(opt + " needs a value");
        }
        return args[i];
    }

    private static int intValue(String[] args, int i, String opt) {
        String v = value(args, i, opt);
        try {
            return Integer.parseInt(v);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(opt + " wants an integer, got '" + v + "'");
        }
    }

    private void startWatchdog() {
        Thread t = new Thread(() -> {
            try {
                Thread.sleep(overallTimeoutSec * 1000L);
            } catch (InterruptedException e) {
                return;
            }
            ObjectNode line = MAPPER.createObjectNode();
            line.put("method", "<watchdog>");
            line.put("ok", false);
            line.put("check", "fail");
            line.put("detail", "no completion within " + overallTimeoutSec + " s");
            OUT.println(line);
            fail("engine-client-check: FAILED: overall timeout of " + overallTimeoutSec + " s exceeded");
            OUT.flush();
            System.err.flush();
            Runtime.getRuntime().halt(EXIT_CONNECTION);
        }, "watchdog");
        t.setDaemon(true);
        t.start();
    }

    /** Builds the client as ovirt-engine's JsonRpcUtils.createStompClient does. */
    JsonRpcClient createClient() throws ClientConnectionException {
        StompClientPolicy connectionPolicy = new StompClientPolicy(connectTimeoutMs, retries, heartbeatMs,
                IOException.class, REQUEST_QUEUE, RESPONSE_QUEUE);
        connectionPolicy.setEventQueue(EVENT_QUEUE);
        if (identifier != null) {
            connectionPolicy.setIdentifier(identifier);
        }
        ClientPolicy clientPolicy = new ClientPolicy(callTimeoutMs, retries, heartbeatMs, IOException.class);

        ManagerProvider provider = null;
        if (!insecure) {
            final KeyManager[] kms;
            final TrustManager[] tms;
            try {
                kms = Pem.keyManagers(cert, key);
                tms = Pem.trustManagers(ca);
            } catch (IOException | GeneralSecurityException e) {
                throw new ClientConnectionException("cannot load TLS material: " + e.getMessage(), e);
            }
            final String protocol = tlsProtocol;
            // as the engine's EngineManagerProvider: SSLContext.getInstance(VdsmSSLProtocol)
            provider = new ManagerProvider() {
                @Override
                public TrustManager[] getTrustManagers() {
                    return tms;
                }

                @Override
                public KeyManager[] getKeyManagers() {
                    return kms;
                }

                @Override
                public SSLContext getSSLContext() throws GeneralSecurityException {
                    SSLContext context = SSLContext.getInstance(protocol);
                    context.init(getKeyManagers(), getTrustManagers(), null);
                    return context;
                }
            };
        }
        Reactor reactor = ReactorFactory.getReactor(provider, ReactorType.STOMP);
        ReactorClient client = reactor.createClient(host, port);
        client.setClientPolicy(connectionPolicy);
        reactorClient = client;
        ResponseWorker worker = ReactorFactory.getWorker(Runtime.getRuntime().availableProcessors());
        JsonRpcClient jsonClient = worker.register(client);
        jsonClient.setRetryPolicy(clientPolicy);
        return jsonClient;
    }

    int run() {
        final JsonRpcClient client;
        try {
            client = createClient();
        } catch (ClientConnectionException e) {
            fail("engine-client-check: FAILED: " + e.getMessage());
            return EXIT_CONNECTION;
        }
        try {
            // 1. StoragePool.connect, parameters as JsonRpcIIrsServer#connectStoragePool
            JsonNode r = call(client, "StoragePool.connect", connectRequest(master, masterVersion));
            if (r == null) {
                return transportFailed();
            }
            expectOk(r, "StoragePool.connect", res -> null);

            // 2. StoragePool.getInfo (engine: withIgnoreResponseKey, reads info and dominfo)
            r = call(client, "StoragePool.getInfo",
                    new RequestBuilder("StoragePool.getInfo").withParameter("storagepoolID", pool).build());
            if (r == null) {
                return transportFailed();
            }
            expectOk(r, "StoragePool.getInfo", this::checkPoolInfo);

            // 3. Host.getStorageRepoStats (engine: no parameters, withResponseKey("stats"))
            r = call(client, "Host.getStorageRepoStats", new RequestBuilder("Host.getStorageRepoStats").build());
            if (r == null) {
                return transportFailed();
            }
            expectOk(r, "Host.getStorageRepoStats", this::checkRepoStats);

            // 4. a call that must fail with a VDSM error code
            JsonRpcRequest bad;
            String badMethod;
            if (badCall.equals("unknown-pool")) {
                badMethod = "StoragePool.getInfo";
                bad = new RequestBuilder(badMethod).withParameter("storagepoolID", unknownPool).build();
            } else {
                badMethod = "StoragePool.connect";
                bad = connectRequest(UUID.randomUUID().toString(), masterVersion);
            }
            r = call(client, badMethod, bad);
            if (r == null) {
                return transportFailed();
            }
            expectError(r, badMethod);

            if (pauseMs > 0) { // idle time on the open connection, e.g. to watch heart-beats
                try {
                    Thread.sleep(pauseMs);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }

            // 5. StoragePool.disconnect, parameters as JsonRpcIIrsServer#disconnectStoragePool
            r = call(client, "StoragePool.disconnect",
                    new RequestBuilder("StoragePool.disconnect").withParameter("storagepoolID", pool)
                            .withParameter("hostID", hostId)
                            .withParameter("scsiKey", scsiKey)
                            .build());
            if (r == null) {
                return transportFailed();
            }
            expectOk(r, "StoragePool.disconnect", res -> null);
        } finally {
            // as the engine does on host removal: UNSUBSCRIBE each subscription, DISCONNECT with receipt
            if (reactorClient != null && reactorClient.isOpen()) {
                try {
                    reactorClient.close().get(2, TimeUnit.SECONDS);
                } catch (Exception ignored) {
                }
            }
        }
        if (failures > 0) {
            fail("engine-client-check: FAILED: " + failures + " check(s) failed");
            return EXIT_CHECK_FAILED;
        }
        System.err.println("engine-client-check: all checks passed");
        return EXIT_OK;
    }

    private int transportFailed() {
        fail("engine-client-check: FAILED: no answer from " + host + ":" + port
                + " (connection, TLS or timeout; see the last JSON line and the library's log above)");
        return EXIT_CONNECTION;
    }

    private JsonRpcRequest connectRequest(String masterSd, int masterVer) {
        return new RequestBuilder("StoragePool.connect").withParameter("storagepoolID", pool)
                .withParameter("hostID", hostId)
                .withParameter("scsiKey", scsiKey)
                .withParameter("masterSdUUID", masterSd)
                .withParameter("masterVersion", masterVer)
                .withOptionalParameterAsMap("domainDict", domains)
                .build();
    }

    /**
     * Sends one request and waits for its response. Returns the raw response as a
     * JSON object {"result":...} or {"error":...}, or null when the transport failed
     * (already reported).
     */
    private JsonNode call(JsonRpcClient client, String method, JsonRpcRequest req) {
        try {
            Future<JsonRpcResponse> f = client.call(req);
            JsonRpcResponse resp = f.get(callTimeoutMs + 2_000L, TimeUnit.MILLISECONDS);
            ObjectNode node = MAPPER.createObjectNode();
            node.set("id", resp.getId());
            if (resp.getError() != null && !resp.getError().isNull()) {
                node.set("error", resp.getError());
                JsonNode code = resp.getError().get("code");
                if (code != null && code.isInt() && code.asInt() == 5022) {
                    // the library's own "network issue"/timeout response, not the server's
                    report(method, false, null, resp.getError(), "fail",
                            "no response from server (client library error 5022)");
                    failures++;
                    return null;
                }
            } else {
                node.set("result", resp.getResult());
            }
            return node;
        } catch (ClientConnectionException e) {
            report(method, false, null, null, "fail", "connection failed: " + rootMessage(e));
            failures++;
            return null;
        } catch (TimeoutException e) {
            report(method, false, null, null, "fail", "no response within " + (callTimeoutMs + 2000) + " ms");
            failures++;
            return null;
        } catch (InterruptedException | ExecutionException | RuntimeException e) {
            // the library's own failure paths (e.g. a TLS handshake that failed) can surface as a
            // NullPointerException; the cause is in its log on stderr
            report(method, false, null, null, "fail", "call failed: " + rootMessage(e)
                    + " (connection or TLS handshake failure? see the library's log on stderr)");
            failures++;
            return null;
        }
    }

    interface ResultCheck {
        /** @return null if the result is acceptable, else why not */
        String check(JsonNode result);
    }

    private void expectOk(JsonNode r, String method, ResultCheck check) {
        if (r.has("error")) {
            report(method, false, null, r.get("error"), "fail", "expected success");
            failures++;
            return;
        }
        JsonNode result = r.get("result");
        String why = null;
        if (result == null || result.isNull()) {
            why = "response has no result";
        } else if (checkResults) {
            why = check.check(result);
        }
        if (why != null) {
            failures++;
        }
        report(method, true, result, null, why == null ? "pass" : "fail", why);
    }

    private void expectError(JsonNode r, String method) {
        if (!r.has("error")) {
            report(method, true, r.get("result"), null, "fail",
                    "expected VDSM error code " + expectErrorCodes + ", got success");
            failures++;
            return;
        }
        JsonNode err = r.get("error");
        JsonNode code = err.get("code");
        boolean ok = code != null && code.isInt() && expectErrorCodes.contains(code.asInt());
        if (!ok) {
            failures++;
        }
        report(method, false, null, err, ok ? "pass" : "fail",
                ok ? "expected error" : "expected error code " + expectErrorCodes + ", got " + code);
    }

    String checkPoolInfo(JsonNode result) {
        JsonNode info = result.get("info");
        if (info == null || !info.isObject()) {
            return "result has no 'info' object";
        }
        JsonNode mu = info.get("master_uuid");
        if (mu == null || !master.equals(mu.asText())) {
            return "info.master_uuid is " + mu + ", expected \"" + master + "\"";
        }
        JsonNode mv = info.get("master_ver");
        if (mv == null || mv.asInt(Integer.MIN_VALUE) != masterVersion) {
            return "info.master_ver is " + mv + ", expected " + masterVersion;
        }
        JsonNode dominfo = result.get("dominfo");
        if (dominfo == null || !dominfo.isObject()) {
            return "result has no 'dominfo' object";
        }
        for (String sd : domains.keySet()) {
            if (!dominfo.has(sd)) {
                return "dominfo lacks domain " + sd;
            }
        }
        return null;
    }

    String checkRepoStats(JsonNode result) {
        if (!result.isObject()) {
            return "result is not an object";
        }
        for (Map.Entry<String, String> d : domains.entrySet()) {
            if (d.getValue().equalsIgnoreCase("active") && !result.has(d.getKey())) {
                return "no stats for active domain " + d.getKey();
            }
        }
        for (Iterator<Map.Entry<String, JsonNode>> it = result.fields(); it.hasNext();) {
            Map.Entry<String, JsonNode> e = it.next();
            JsonNode code = e.getValue().get("code");
            if (code == null || !code.isInt()) {
                return "stats of " + e.getKey() + " have no integer 'code'";
            }
        }
        return null;
    }

    private static void report(String method, boolean ok, JsonNode result, JsonNode error, String check,
            String detail) {
        ObjectNode line = MAPPER.createObjectNode();
        line.put("method", method);
        line.put("ok", ok);
        if (result != null) {
            line.set("result", result);
        }
        if (error != null) {
            ObjectNode e = line.putObject("error");
            e.set("code", error.get("code"));
            e.set("message", error.get("message"));
        }
        line.put("check", check);
        if (detail != null) {
            line.put("detail", detail);
        }
        OUT.println(line);
    }

    private static void fail(String msg) {
        System.err.println(msg);
    }

    private static String rootMessage(Throwable t) {
        Throwable c = t;
        while (c.getCause() != null && c.getCause() != c) {
            c = c.getCause();
        }
        return c == t ? String.valueOf(t.getMessage()) : t.getMessage() + " (" + c + ")";
    }
}
