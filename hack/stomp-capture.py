#!/usr/bin/env python3
"""Tiny plain-TCP STOMP 1.2 peer that imitates VDSM just enough for
interop/java's EngineClientCheck, and logs every raw byte it receives.

It accepts connections one at a time (``--connections N``, default 1), answers
CONNECT with CONNECTED, remembers SUBSCRIBE ids, answers each SEND with a
MESSAGE to the request's reply-to destination carrying a JSON-RPC 2.0 response
with the request's id, answers DISCONNECT with RECEIPT when asked, and exits.

The MESSAGE frame can be varied to find out what the client really needs:
  --no-subscription        omit the subscription header
  --wrong-subscription     put a subscription id the client never sent
  --no-destination         omit the destination header
  --no-content-length      omit content-length (body ends at NUL)
  --no-content-type        omit content-type
  --crlf                   end header lines with \\r\\n instead of \\n
  --array-response         wrap each JSON-RPC response in a one-element array
  --chunk N                write every frame N bytes at a time (partial reads)
  --connected-heart-beat X,Y   heart-beat header of CONNECTED ('' to omit)
  --no-reply               never answer SENDs (tests the client's timeouts)
  --pad N                  add an N-byte filler field to each result (large frames)
  --event-first            before each response, send a JSON-RPC notification (no id) on
                           jms.queue.events in the SAME write as the response
  --event-separate         with --event-first: the notification gets its own write
                           (back-to-back writes, not one)
  --kick-ms N              N ms after each batch of MESSAGEs, write a lone heart-beat EOL
  --server-heartbeat-ms N  write a heart-beat EOL whenever the peer was not written to for N ms
  --tls-cert/--tls-key/--tls-ca PEM   serve TLS, requiring a client certificate signed by --tls-ca
  --min-frame N            pad each MESSAGE body with trailing JSON whitespace so the
                           whole frame is at least N bytes
  --coalesce-connected     no separate CONNECTED write: CONNECTED goes out together with
                           the first response (tests two frames in one read)

Raw bytes go to --log (default stderr) as Python bytes literals, one chunk
per line, prefixed with '<<' (received) or '>>' (sent).
"""
import argparse
import json
import socket
import sys
import time
import uuid


def log(out, direction, data):
    out.write("%s %r\n" % (direction, data))
    out.flush()


class Conn:
    def __init__(self, sock, args, out):
        self.sock = sock
        self.args = args
        self.out = out
        self.buf = b""
        self.subs = {}  # destination -> subscription id
        self.pool = None  # last connect params
        self.msg_seq = 0
        self.pending = b""  # frames held back to be written with the next one

    # ---- output ----
    def send_frame(self, command, headers, body=b"", hold=False):
        eol = "\r\n" if self.args.crlf else "\n"
        lines = [command]
        for k, v in headers:
            lines.append("%s:%s" % (k, v))
        frame = (eol.join(lines) + eol + eol).encode() + body + b"\0"
        if hold:
            self.pending += frame
            return
        frame, self.pending = self.pending + frame, b""
        if self.args.chunk:
            for i in range(0, len(frame), self.args.chunk):
                part = frame[i:i + self.args.chunk]
                self.sock.sendall(part)
                log(self.out, ">>", part)
                time.sleep(0.05)
        else:
            self.sock.sendall(frame)
            log(self.out, ">>", frame)

    # ---- input ----
    def frames(self):
        """Yield (command, headers, body) for every complete frame in buf."""
        while True:
            # heart-beats / EOLs between frames
            stripped = self.buf.lstrip(b"\r\n")
            if len(stripped) != len(self.buf):
                self.out.write("-- heart-beat/EOL bytes: %d\n" % (len(self.buf) - len(stripped)))
                self.buf = stripped
            end_hdr = self.buf.find(b"\n\n")
            if end_hdr < 0:
                return
            head = self.buf[:end_hdr].decode("utf-8").replace("\r", "")
            lines = head.split("\n")
            command = lines[0]
            headers = []
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers.append((k, v))
            h = dict(headers)
            body_start = end_hdr + 2
            if "content-length" in h:
                n = int(h["content-length"])
                if len(self.buf) < body_start + n + 1:
                    return
                body = self.buf[body_start:body_start + n]
                if self.buf[body_start + n:body_start + n + 1] != b"\0":
                    self.out.write("-- WARNING: no NUL after content-length bytes\n")
                self.buf = self.buf[body_start + n + 1:]
            else:
                nul = self.buf.find(b"\0", body_start)
                if nul < 0:
                    return
                body = self.buf[body_start:nul]
                self.buf = self.buf[nul + 1:]
            yield command, headers, body

    def serve(self):
        hb = self.args.server_heartbeat_ms / 1000.0
        self.sock.settimeout(hb if hb else self.args.idle)
        last_rx = time.time()
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                if hb and time.time() - last_rx < self.args.idle:
                    self.sock.sendall(b"\n")
                    log(self.out, ">>", b"\n")
                    continue
                self.out.write("-- idle timeout, closing\n")
                return
            except ConnectionResetError:
                self.out.write("-- connection reset by peer\n")
                return
            if not data:
                self.out.write("-- peer closed the connection (EOF)\n")
                return
            last_rx = time.time()
            log(self.out, "<<", data)
            self.buf += data
            for command, headers, body in self.frames():
                self.out.write("-- frame %s headers=%s body=%r\n" % (command, headers, body))
                if self.handle(command, dict(headers), body) == "close":
                    time.sleep(0.2)
                    return

    def handle(self, command, h, body):
        if command in ("CONNECT", "STOMP"):
            hdrs = [("version", "1.2")]
            if self.args.connected_heart_beat:
                hdrs.append(("heart-beat", self.args.connected_heart_beat))
            self.send_frame("CONNECTED", hdrs, hold=self.args.coalesce_connected)
        elif command == "SUBSCRIBE":
            self.subs[h.get("destination")] = h.get("id")
        elif command == "UNSUBSCRIBE":
            pass
        elif command == "SEND":
            if self.args.no_reply:
                return None
            req = json.loads(body)
            reqs = req if isinstance(req, list) else [req]
            for r in reqs:
                resp = self.respond(r)
                if resp is None:
                    continue
                payload = [resp] if self.args.array_response else resp
                if self.args.event_first:
                    ev = {"jsonrpc": "2.0", "method": "|virt|VM_status|00000000-0000-0000-0000-000000000001",
                          "params": {"notify_time": 4295327890}}
                    self.send_message("jms.queue.events", json.dumps(ev).encode(),
                                      hold=not self.args.event_separate)
                self.send_message(h.get("reply-to", ""), json.dumps(payload).encode())
            if self.args.kick_ms:
                time.sleep(self.args.kick_ms / 1000.0)
                self.sock.sendall(b"\n")
                log(self.out, ">>", b"\n")
        elif command == "DISCONNECT":
            if "receipt" in h:
                try:
                    self.send_frame("RECEIPT", [("receipt-id", h["receipt"])])
                except (BrokenPipeError, ConnectionResetError) as e:
                    self.out.write("-- could not write RECEIPT: %s\n" % e)
            return "close"
        return None

    def send_message(self, dest, payload, hold=False):
        self.msg_seq += 1
        if self.args.min_frame:
            payload = payload + b" " * max(0, self.args.min_frame - len(payload) - 200)
        hdrs = []
        if not self.args.no_destination:
            hdrs.append(("destination", dest))
        if self.args.wrong_subscription:
            hdrs.append(("subscription", str(uuid.uuid4())))
        elif not self.args.no_subscription:
            hdrs.append(("subscription", self.subs.get(dest, "")))
        hdrs.append(("message-id", str(self.msg_seq)))
        if not self.args.no_content_type:
            hdrs.append(("content-type", "application/json"))
        if not self.args.no_content_length:
            hdrs.append(("content-length", str(len(payload))))
        self.send_frame("MESSAGE", hdrs, payload, hold=hold)

    # ---- a very small VDSM ----
    def respond(self, req):
        rid = req.get("id")
        if rid is None:
            return None  # notification
        method = req.get("method")
        p = req.get("params") or {}

        def ok(result):
            if self.args.pad and isinstance(result, dict):
                result = dict(result, _pad="x" * self.args.pad)
            return {"jsonrpc": "2.0", "id": rid, "result": result}

        def err(code, message):
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}

        if method == "StoragePool.connect":
            if self.args.master and p.get("masterSdUUID") != self.args.master:
                return err(324, "Wrong Master domain or its version: 'SD=%s, pool=%s'"
                           % (p.get("masterSdUUID"), p.get("storagepoolID")))
            self.pool = p
            return ok(True)
        if method == "StoragePool.getInfo":
            if not self.pool or p.get("storagepoolID") != self.pool.get("storagepoolID"):
                return err(309, "Unknown pool id, pool not connected: ('%s',)" % p.get("storagepoolID"))
            doms = self.pool.get("domainDict") or {}
            info = {
                "name": "No Description",
                "isoprefix": "",
                "pool_status": "connected",
                "lver": -1,
                "domains": ",".join("%s:%s" % (d, s.capitalize()) for d, s in doms.items()),
                "master_uuid": self.pool.get("masterSdUUID"),
                "version": "5",
                "spm_id": -1,
                "type": "NFS",
                "master_ver": self.pool.get("masterVersion"),
            }
            dominfo = {d: {"status": s.capitalize(), "alerts": [], "isoprefix": "", "version": 5,
                           "disktotal": "107374182400", "diskfree": "96636764160"}
                       for d, s in doms.items()}
            return ok({"info": info, "dominfo": dominfo})
        if method == "Host.getStorageRepoStats":
            doms = (self.pool or {}).get("domainDict") or {}
            return ok({d: {"code": 0, "lastCheck": "1.5", "delay": "0.000412", "valid": True,
                           "version": 5, "acquired": True, "actual": True}
                       for d in doms})
        if method == "StoragePool.disconnect":
            self.pool = None
            return ok(True)
        return err(-32601, "The method does not exist or is not available: {'method': '%s'}" % method)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0, help="0: pick a free port, print it on stdout")
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--log", help="file for the raw byte log (default stderr)")
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--idle", type=float, default=40.0, help="seconds of silence before closing")
    ap.add_argument("--master", help="answer 324 to a connect naming another master")
    ap.add_argument("--no-subscription", action="store_true")
    ap.add_argument("--wrong-subscription", action="store_true")
    ap.add_argument("--no-destination", action="store_true")
    ap.add_argument("--no-content-length", action="store_true")
    ap.add_argument("--no-content-type", action="store_true")
    ap.add_argument("--crlf", action="store_true")
    ap.add_argument("--array-response", action="store_true")
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--connected-heart-beat", default="0,0")
    ap.add_argument("--no-reply", action="store_true")
    ap.add_argument("--pad", type=int, default=0)
    ap.add_argument("--event-first", action="store_true")
    ap.add_argument("--event-separate", action="store_true")
    ap.add_argument("--kick-ms", type=int, default=0)
    ap.add_argument("--server-heartbeat-ms", type=int, default=0)
    ap.add_argument("--min-frame", type=int, default=0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-ca")
    ap.add_argument("--coalesce-connected", action="store_true")
    args = ap.parse_args()

    out = open(args.log, "w") if args.log else sys.stderr
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.bind, args.port))
    srv.listen(1)
    srv.settimeout(60)
    print(srv.getsockname()[1], flush=True)
    for _ in range(args.connections):
        try:
            sock, peer = srv.accept()
        except socket.timeout:
            out.write("-- no connection within 60 s\n")
            break
        out.write("-- accepted %s:%d at %s\n" % (peer[0], peer[1], time.strftime("%H:%M:%S")))
        if args.tls_cert:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
            ctx.load_verify_locations(args.tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
            try:
                sock = ctx.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as e:
                out.write("-- TLS handshake failed: %s\n" % e)
                sock.close()
                continue
            out.write("-- TLS %s %s, client cert subject %s\n"
                      % (sock.version(), sock.cipher()[0], sock.getpeercert().get("subject")))
        try:
            Conn(sock, args, out).serve()
        finally:
            sock.close()
            out.write("-- closed at %s\n" % time.strftime("%H:%M:%S"))
            out.flush()
    srv.close()


if __name__ == "__main__":
    main()
