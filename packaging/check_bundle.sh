#!/usr/bin/env bash
# Check a built bundle: the frozen doctor (with its end-to-end engine check) and the frozen
# window starting offscreen. Run after build_bundle.sh (a release does both).
set -euo pipefail
cd "$(dirname "$0")/.."
APP="${1:-dist/MixDesk/mixdesk}"
export QT_QPA_PLATFORM=offscreen
tmp=$(mktemp -d)
export XDG_DATA_HOME="$tmp/data" XDG_CONFIG_HOME="$tmp/config" XDG_STATE_HOME="$tmp/state" XDG_CACHE_HOME="$tmp/cache"
"$APP" doctor --json > "$tmp/doctor.json"
python3 - "$tmp/doctor.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
engine = next(c for c in report["checks"] if c["name"] == "engine")
assert report["ok"] and engine["status"] == "ok", report
print("frozen doctor:", engine["detail"])
PY
MIXDESK_EXIT_AFTER_SHOW=1 "$APP" | grep -q '^shown ' && echo "frozen window: shown"
rm -rf "$tmp"
