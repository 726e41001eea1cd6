#!/usr/bin/env bash
# Self-test of the engine-side interop check: runs interop/java's EngineClientCheck
# (oVirt's vdsm-jsonrpc-java client) against hack/stomp-capture.py, a tiny
# VDSM-imitating STOMP peer, over plain TCP and over mutual TLS with throw-away
# openssl certificates (EC P-256 keys in PKCS#8, as rcgen writes them).
# Exits 0 when both runs pass. Needs java, mvn, python3, openssl.
# Against the real agent, run the printed command of hack/build-interop.sh with
# the agent's CA and an engine client certificate instead.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd="$("$root/hack/build-interop.sh")"
work="$(mktemp -d)"
peer=""
cleanup() {
    if [[ -n "$peer" ]]; then kill "$peer" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

pool=11111111-2222-3333-4444-555555555555
master=aaaaaaaa-0000-0000-0000-000000000001
other=bbbbbbbb-0000-0000-0000-000000000002

# --- throw-away PKI ---
(
    cd "$work"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca-key.pem 2>/dev/null
    openssl req -x509 -new -key ca-key.pem -subj /CN=interop-ca -days 1 -out ca.pem 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >ext.cnf
    for n in server client; do
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$n-key.pem" 2>/dev/null
        openssl req -new -key "$n-key.pem" -subj "/CN=$n" -out "$n.csr" 2>/dev/null
        openssl x509 -req -in "$n.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 \
            -extfile ext.cnf -out "$n.pem" 2>/dev/null
    done
)

run() { # name, extra peer args (array name), extra check args...
    local name=$1 peer_args_name=$2
    shift 2
    local -n peer_args=$peer_args_name
    python3 "$root/hack/stomp-capture.py" --master "$master" --log "$work/$name.frames" \
        "${peer_args[@]}" >"$work/$name.port" &
    peer=$!
    for _ in $(seq 50); do [[ -s "$work/$name.port" ]] && break; sleep 0.1; done
    local rc=0
    # shellcheck disable=SC2086 # $cmd is the printed command line
    $cmd --host 127.0.0.1 --port "$(head -1 "$work/$name.port")" \
        --pool "$pool" --master "$master" --master-version 3 \
        --domain "$master=active" --domain "$other=active" "$@" \
        >"$work/$name.out" 2>"$work/$name.err" || rc=$?
    kill "$peer" 2>/dev/null || true
    wait "$peer" 2>/dev/null || true
    peer=""
    if [[ $rc -ne 0 ]]; then
        echo "interop-selftest: $name FAILED (exit $rc)" >&2
        cat "$work/$name.out" "$work/$name.err" >&2
        echo "--- frames seen by the peer:" >&2
        cat "$work/$name.frames" >&2
        return 1
    fi
    echo "interop-selftest: $name passed ($(grep -c '"check":"pass"' "$work/$name.out") checks)"
}

plain_args=()
tls_args=(--tls-cert "$work/server.pem" --tls-key "$work/server-key.pem" --tls-ca "$work/ca.pem")
run plain plain_args --insecure
run tls tls_args --ca "$work/ca.pem" --cert "$work/client.pem" --key "$work/client-key.pem"
echo "2 passed, 0 failed"
