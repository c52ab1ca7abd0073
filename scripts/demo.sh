#!/usr/bin/env bash
# End-to-end demo: start buildkitd on a temp socket and root, drive it with
# bkctl the way buildctl would, stop it, clean up. Grows with every
# capability the daemon gains.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/debug
tmp=$(mktemp -d -t buildkit-rs-demo.XXXXXX)
sock="unix://$tmp/buildkitd.sock"
pid=

cleanup() {
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "starting buildkitd (root $tmp/root, socket $sock)"
"$bin/buildkitd" --root "$tmp/root" --addr "$sock" --config "$tmp/buildkitd.toml" \
  >"$tmp/buildkitd.log" 2>&1 &
pid=$!

for _ in $(seq 150); do
  [[ -S $tmp/buildkitd.sock ]] && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/buildkitd.log"; exit 1; }
  sleep 0.1
done

bkctl() { "$bin/bkctl" --addr "$sock" "$@"; }
step bkctl debug info
step bkctl debug workers

# A build: copy a small context into an empty tree, out to a directory and a
# tarball, then again from the cache.
mkdir -p "$tmp/context/src"
echo "hello from buildkit-rs" > "$tmp/context/hello.txt"
printf '#!/bin/sh\necho hi\n' > "$tmp/context/src/run.sh"
chmod +x "$tmp/context/src/run.sh"
"$bin/examples/llb_copy" > "$tmp/copy.llb"
step bkctl build --local "context=$tmp/context" --output "type=local,dest=$tmp/out" \
  --output "type=tar,dest=$tmp/out.tar" < "$tmp/copy.llb"
step find "$tmp/out" -printf '%M %p\n'
step tar tvf "$tmp/out.tar"
echo "hello again" > "$tmp/context/hello.txt"
step bkctl build --local "context=$tmp/context" --output "type=local,dest=$tmp/out2" < "$tmp/copy.llb"
step cat "$tmp/out2/out/hello.txt"
step bkctl du
step bkctl prune --all

echo
echo "stopping buildkitd"
kill -TERM "$pid"
wait "$pid"
pid=
echo "daemon log:"
sed 's/^/  /' "$tmp/buildkitd.log"
