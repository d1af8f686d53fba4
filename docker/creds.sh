#!/bin/sh
# The one-shot `creds` service of compose.yaml: development credentials in the
# named volume mounted at /creds, made on first start only (as `just up`
# makes them in .data/creds). The agent of the compose stack is `docker-agent`.
set -eu
dir=/creds
if [ -f "$dir/operator.nk" ]; then
  echo "creds: already in $dir"
  exit 0
fi
sysmonstm creds init "$dir"
for s in persister alerter gateway cli; do
  sysmonstm creds service "$s" --dir "$dir"
done
sysmonstm creds agent "${SYSMON_AGENT_MACHINE:-docker-agent}" --dir "$dir"
# The directory stays 0700: the hub (official nats image) runs as root.
echo "creds: made development credentials in $dir"
