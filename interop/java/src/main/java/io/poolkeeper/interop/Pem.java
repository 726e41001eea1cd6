package io.poolkeeper.interop;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import javax.net.ssl.KeyManager;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;

/**
 * Key and trust managers built straight from PEM files (no keytool step).
 * The private key must be PKCS#8 ("BEGIN PRIVATE KEY"), EC, RSA or Ed25519,
 * as rcgen and `openssl genpkey` write it.
 */
final class Pem {
    private static final Pattern BLOCK = Pattern.compile(
            "-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \\1-----", Pattern.DOTALL);
    private static final char[] PASSWORD = "poolkeeper-interop".toCharArray();

    private Pem() {
    }

    static List<X509Certificate> certificates(Path path) throws IOException, GeneralSecurityException {
        byte[] pem = Files.readAllBytes(path);
        Collection<? extends Certificate> certs = CertificateFactory.getInstance("X.509")
                .generateCertificates(new ByteArrayInputStream(pem));
        List<X509Certificate> out = new ArrayList<>();
        for (Certificate c : certs) {
            out.add((X509Certificate) c);
        }
        if (out.isEmpty()) {
            throw new GeneralSecurityException("no certificate in " + path);
        }
        return out;
    }

    static PrivateKey privateKey(Path path) throws IOException, GeneralSecurityException {
        String text = Files.readString(path, StandardCharsets.US_ASCII);
        Matcher m = BLOCK.matcher(text);
        while (m.find()) {
            String type = m.group(1);
            if (!type.endsWith("PRIVATE KEY")) {
                continue;
            }
            if (!type.equals("PRIVATE KEY")) {
                throw new GeneralSecurityException(path + ": '" + type + "' is not PKCS#8; convert it with"
                        + " `openssl pkcs8 -topk8 -nocrypt -in " + path + "`");
            }
            byte[] der = Base64.getMimeDecoder().decode(m.group(2));
            PKCS8EncodedKeySpec spec = new PKCS8EncodedKeySpec(der);
            GeneralSecurityException last = null;
            for (String alg : new String[] {"EC", "RSA", "Ed25519"}) {
                try {
                    return KeyFactory.getInstance(alg).generatePrivate(spec);
                } catch (GeneralSecurityException e) {
                    last = e;
                }
            }
            throw new GeneralSecurityException(path + ": PKCS#8 key is neither EC, RSA nor Ed25519", last);
        }
        throw new GeneralSecurityException("no 'BEGIN PRIVATE KEY' block in " + path);
    }

    static KeyManager[] keyManagers(Path certPath, Path keyPath) throws IOException, GeneralSecurityException {
        List<X509Certificate> chain = certificates(certPath);
        PrivateKey key = privateKey(keyPath);
        KeyStore ks = KeyStore.getInstance("PKCS12");
        ks.load(null, null);
        ks.setKeyEntry("client", key, PASSWORD, chain.toArray(new Certificate[0]));
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(ks, PASSWORD);
        return kmf.getKeyManagers();
    }

    static TrustManager[] trustManagers(Path caPath) throws IOException, GeneralSecurityException {
        KeyStore ts = KeyStore.getInstance("PKCS12");
        ts.load(null, null);
        int i = 0;
        for (X509Certificate c : certificates(caPath)) {
            ts.setCertificateEntry("ca-" + i++, c);
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(ts);
        return tmf.getTrustManagers();
    }
}
