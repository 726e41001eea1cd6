#!/usr/bin/env bash
# Builds interop/java (the engine-side interoperability check, on oVirt's own
# vdsm-jsonrpc-java client) and prints the command line that runs it:
#
#   $(hack/build-interop.sh) --host 127.0.0.1 --port 54321 --ca ca.pem --cert c.pem --key k.pem ...
#
# Needs only Java 17 and Maven 3.8 (dependencies come from Maven Central into
# the ordinary local repository, ~/.m2 unless MAVEN_REPO_LOCAL says otherwise).
# The build happens outside the checkout and is cached under
# ${POOLKEEPER_CACHE:-~/.cache/poolkeeper}/interop-<hash of pom and sources>/,
# so a second run with unchanged sources prints the command at once.
# Quiet on success; on failure prints Maven's output and exits non-zero.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/interop/java"
cache_root="${POOLKEEPER_CACHE:-$HOME/.cache/poolkeeper}"

for tool in java mvn sha256sum; do
    command -v "$tool" >/dev/null || { echo "build-interop: '$tool' not found (need Java 17 and Maven)" >&2; exit 1; }
done

# Hash of the build inputs: pom.xml and every file under src/, by path and content.
hash="$(
    cd "$src"
    { echo pom.xml; find src -type f | LC_ALL=C sort; } | while IFS= read -r f; do
        printf '%s\0' "$f"
        sha256sum <"$f"
    done | sha256sum | cut -c1-16
)"
out="$cache_root/interop-$hash"
jar="$out/poolkeeper-interop.jar"

if [[ ! -f "$jar" || ! -f "$out/classpath" ]]; then
    mkdir -p "$cache_root"
    stage="$(mktemp -d "$cache_root/.interop-build.XXXXXX")"
    trap 'rm -rf "$stage"' EXIT
    cp -R "$src/pom.xml" "$src/src" "$stage/"
    mvn_args=(-B -q -Dstyle.color=never -f "$stage/pom.xml")
    if [[ -n "${MAVEN_REPO_LOCAL:-}" ]]; then
        mvn_args+=("-Dmaven.repo.local=$MAVEN_REPO_LOCAL")
    fi
    if ! log="$(mvn "${mvn_args[@]}" package 2>&1)"; then
        echo "$log" >&2
        echo "build-interop: maven build failed" >&2
        exit 1
    fi
    mkdir -p "$stage/dist"
    cp "$stage"/target/poolkeeper-interop-*.jar "$stage/dist/poolkeeper-interop.jar"
    cp -R "$stage/target/lib" "$stage/dist/lib"
    # explicit class path (no wildcard, so the printed command survives word splitting and globbing)
    cp_list="$out/poolkeeper-interop.jar"
    for dep in "$stage"/dist/lib/*.jar; do
        cp_list+=":$out/lib/$(basename "$dep")"
    done
    printf '%s\n' "$cp_list" >"$stage/dist/classpath"
    # publish atomically; a concurrent build that won the race is just as good
    if ! mv -T "$stage/dist" "$out" 2>/dev/null; then
        [[ -f "$jar" ]] || { echo "build-interop: could not publish $out" >&2; exit 1; }
    fi
fi

printf 'java -cp %s io.poolkeeper.interop.EngineClientCheck\n' "$(cat "$out/classpath")"
