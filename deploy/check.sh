#!/usr/bin/env bash
# deploy/check.sh — validates the deploy kit. CI runs: bash deploy/check.sh
# Needs: Go, and root with apt (Debian) to install promtool and jq when missing.
# Prints one line per check ("ok"/"FAIL") and exits non-zero if any check failed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
failed=0
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Metric names the worker exports: the README's metrics table (a Go test in cmd/mailworker keeps that
# table equal to what the worker registers), plus the NATS exporter's and Prometheus' own.
readme_metrics="$(grep -oE '`mailworker_[a-z_]+`' ../README.md | tr -d '`' | sort -u | paste -sd'|' -)"
known_metrics="^(${readme_metrics}|jetstream_consumer_num_pending|jetstream_consumer_num_ack_pending|up)\$"

run() { # run NAME CMD...: runs CMD, prints one status line, keeps output only on failure
  local name="$1"; shift
  local start=$SECONDS
  if "$@" >"$tmp/out" 2>&1; then
    printf 'ok    %-58s (%ss)\n' "$name" "$((SECONDS - start))"
  else
    printf 'FAIL  %-58s (%ss)\n' "$name" "$((SECONDS - start))"
    sed 's/^/      /' "$tmp/out" | tail -n 60
    failed=1
  fi
}

need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)   # Debian's package ships /usr/bin/promtool
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
if ((${#need_apt[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  run "install ${need_apt[*]} (apt)" bash -c "$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends ${need_apt[*]}"
fi
command -v go >/dev/null 2>&1 || { echo "FAIL  go is not installed"; exit 1; }

check_metric_names() { # every mailworker_/jetstream_ metric referenced is one the worker exports
  local bad
  bad="$(cat "$@" | grep -oE '\b(mailworker|jetstream)_[a-z_]+' | sed -E 's/_(bucket|sum|count)$//' | sort -u | grep -vE "$known_metrics" || true)"
  [[ -z "$bad" ]] || { echo "unknown metric names: $bad"; return 1; }
}

dashboard_promql() { # parse every dashboard query with promtool by wrapping them as recording rules
  {
    echo "groups:"; echo "  - name: dashboard"; echo "    rules:"
    jq -r '[.. | objects | select(has("expr")) | .expr] | to_entries[] | "      - record: dashboard:q\(.key)\n        expr: \(.value | gsub("\\$__rate_interval"; "5m") | gsub("\\$profile"; ".*") | @json)"' \
      monitoring/grafana-dashboard.json
  } >"$tmp/dashboard-rules.yaml"
  promtool check rules "$tmp/dashboard-rules.yaml"
}

dashboard_json() {
  jq -e '(.uid | length > 0) and (.panels | length > 0) and ([.panels[] | select(.type != "row") | .targets | length > 0] | all)' \
    monitoring/grafana-dashboard.json >/dev/null
}

runbook_anchors() { # every runbook_url anchor in alerts.yaml has a heading in docs/runbook.md
  local runbook="$here/../docs/runbook.md" missing=0 a
  for a in $(grep -oE 'runbook\.md#[a-z0-9-]+' monitoring/alerts.yaml | cut -d'#' -f2 | sort -u); do
    # GitHub anchor: heading text lower-cased, spaces -> '-', punctuation dropped.
    if ! grep -E '^#+ ' "$runbook" | sed -E 's/^#+ //; s/[A-Z]/\L&/g; s/[^a-z0-9 -]//g; s/ /-/g' | grep -qx "$a"; then
      echo "docs/runbook.md has no heading for #$a"; missing=1
    fi
  done
  return $missing
}

run "promtool check rules monitoring/alerts.yaml" promtool check rules monitoring/alerts.yaml
run "promtool test rules monitoring/alerts_test.yaml" promtool test rules monitoring/alerts_test.yaml
run "grafana dashboard JSON parses (jq)" dashboard_json
run "grafana dashboard PromQL parses (promtool)" dashboard_promql
run "metric names in alerts + dashboard exist (README table)" check_metric_names monitoring/alerts.yaml monitoring/grafana-dashboard.json
run "alert runbook_url anchors exist in docs/runbook.md" runbook_anchors
# Static only (no PowerShell here): brackets/quoting balance, no "$($x:fmt)", no space after a
# continuation backtick, #Requires, SupportsShouldProcess. It does not prove the scripts parse or run.
run "PowerShell static checks (go test ./deploy)" bash -c 'cd .. && go test -count=1 -run PowerShell ./deploy/'
run "kubernetes manifests + NATS accounts (go test, kubernetes/validate)" bash -c 'cd kubernetes/validate && go vet ./... && go test -count=1 ./...'

if ((failed)); then echo "deploy/check.sh: FAILED"; exit 1; fi
echo "deploy/check.sh: all checks passed"
