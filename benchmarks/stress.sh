#!/usr/bin/env bash
# The flakiness check: in a fresh clone, beside two CPU-bound processes, the whole test suite N times in
# a row and every test that waits on time or signals M times in a row.  Prints one line a run.
#
#   bash benchmarks/stress.sh [FULL_RUNS=3] [TIMING_RUNS=30]
#
# Run it from a clone whose .venv has the dev and local extras (bash .ci/run makes one).  Run it in the
# foreground, or know that a background job starts with SIGINT ignored (the Ctrl-C test gives its child
# Ctrl-C back; anything else you add must too).
set -uo pipefail
cd "$(dirname "$0")/.."
FULL_RUNS=${1:-3}
TIMING_RUNS=${2:-30}
. .venv/bin/activate

TIMING=(
  tests/test_cli.py::test_ctrl_c_exits_130_and_logs_the_partial_run
  tests/test_cli_trust.py::test_sigterm_keeps_every_finished_call_and_exits_143
  tests/test_cli_trust.py::test_a_full_stdout_is_reported_and_the_answer_is_in_the_log
  tests/test_cli_trust.py::test_quiet_in_a_terminal_streams_and_says_when_a_cut_stream_is_retried
  tests/test_eval_trust.py::test_sigterm_during_an_eval_keeps_finished_items_and_the_rerun_pays_only_the_rest
  tests/test_eval_trust.py::test_a_full_disk_stops_new_items_and_loses_no_saved_one
  tests/test_eval_trust.py::test_a_second_eval_on_the_same_folder_is_refused_at_once
  tests/test_eval_trust.py::test_concurrent_items_do_not_starve_a_budget
  tests/test_reliability.py tests/test_fanout.py tests/test_limits.py tests/test_tpm.py tests/test_tools_budget.py
  tests/test_runlog.py tests/test_kill9.py tests/test_sandbox.py
  tests/test_stage_execute.py::test_a_misbehaving_program_is_contained_and_the_run_goes_on
)

hogs=()
for _ in 1 2; do python3 -c "while True: pass" & hogs+=($!); done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
log=$(mktemp -d)
failed=0
for i in $(seq 1 "$FULL_RUNS"); do
  start=$SECONDS
  python -m pytest -q -p no:cacheprovider > "$log/full-$i.log" 2>&1; rc=$?
  echo "full run $i: exit $rc, $((SECONDS - start)) s: $(tail -1 "$log/full-$i.log")"
  [ $rc -eq 0 ] || failed=1
done
for i in $(seq 1 "$TIMING_RUNS"); do
  start=$SECONDS
  python -m pytest -q -p no:cacheprovider "${TIMING[@]}" > "$log/timing-$i.log" 2>&1; rc=$?
  echo "timing run $i: exit $rc, $((SECONDS - start)) s: $(tail -1 "$log/timing-$i.log")"
  [ $rc -eq 0 ] || failed=1
done
echo "logs: $log"
exit $failed
