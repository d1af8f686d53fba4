#!/usr/bin/env bash
# Builds the agent's Debian package (what `just package` runs):
#   target/debian/sysmonstm-agent_<version>_<arch>.deb
# holding /usr/bin/sysmonstm-agent (profile `agent`: built for size), its
# systemd unit and /etc/sysmonstm/agent.toml (a conffile: an upgrade keeps the
# operator's edits). The unit is installed but not enabled: the agent needs
# its credentials first (README, "Adding a machine").
# Plain dpkg-deb, so nothing beyond Debian's own tools is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
target="${CARGO_TARGET_DIR:-$root/target}"

cargo build -q --profile agent -p sysmonstm-agent --bin sysmonstm-agent
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d -t sysmonstm-deb-XXXXXX)"
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"

install -D -m 0755 "$target/agent/sysmonstm-agent" "$stage/usr/bin/sysmonstm-agent"
sed 's#/usr/local/bin/sysmonstm-agent#/usr/bin/sysmonstm-agent#' services/agent/sysmonstm-agent.service \
  | install -D -m 0644 /dev/stdin "$stage/lib/systemd/system/sysmonstm-agent.service"
install -D -m 0644 services/agent/agent.example.toml "$stage/etc/sysmonstm/agent.toml"
install -D -m 0644 LICENSE "$stage/usr/share/doc/sysmonstm-agent/copyright" 2>/dev/null \
  || printf 'sysmonstm-agent\nLicense: Apache-2.0\n' | install -D -m 0644 /dev/stdin "$stage/usr/share/doc/sysmonstm-agent/copyright"

mkdir -p "$stage/DEBIAN"
size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat >"$stage/DEBIAN/control" <<EOF
Package: sysmonstm-agent
Version: $version
Architecture: $arch
Maintainer: sysmonstm developers <dev@example.invalid>
Installed-Size: $size
Depends: libc6 (>= 2.34)
Section: admin
Priority: optional
Homepage: https://example.invalid/sysmonstm
Description: sysmonstm agent: this machine's metrics to NATS JetStream
 Samples CPU, memory, disks, network, load, processes and temperatures every
 second and publishes them as protobuf snapshots to a sysmonstm hub, keeping
 every snapshot in an on-disk spool until the hub has stored it.
EOF
echo "/etc/sysmonstm/agent.toml" >"$stage/DEBIAN/conffiles"
cat >"$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
echo "sysmonstm-agent installed. Put this machine's credentials in /etc/sysmonstm/agent.creds (root, 0600),"
echo "its machine id and the hub in /etc/sysmonstm/agent.toml, then: systemctl enable --now sysmonstm-agent"
EOF
chmod 0755 "$stage/DEBIAN/postinst"

mkdir -p "$target/debian"
out="$target/debian/sysmonstm-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$out" >/dev/null
echo "$out"
