#!/usr/bin/env bash
# Renders a `pipe report --html DIR` site in headless Chromium: DIR/index.html to OUT.png
# and the first pipeline page to OUT.pipeline.png (or PAGE, relative to DIR, if given).
# Checks what a browser really shows (layout, charts, pictures) from disk, offline.
#
#   scripts/screenshot_report.sh /tmp/html_out /tmp/report.png [pipelines/quickstart.html]
#
# Needs chromium (Debian: apt-get install chromium fonts-dejavu-core).
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 DIR OUT.png [PAGE]" >&2
  exit 2
fi
dir=$(cd "$1" && pwd)
out=$(realpath -m "$2")
page=${3:-$(cd "$dir" && ls pipelines/*.html 2>/dev/null | head -n 1)}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "$0: no chromium on PATH (apt-get install chromium)" >&2
  exit 1
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT

shot() { # shot PAGE PNG HEIGHT
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --user-data-dir="$profile" --window-size=1280,"$3" \
    --screenshot="$2" "file://$dir/$1" 2>/dev/null
  echo "$1 -> $2"
}

shot index.html "$out" 900
if [ -n "$page" ]; then
  shot "$page" "${out%.png}.pipeline.png" 2400
fi
