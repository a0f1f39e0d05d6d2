#!/bin/bash
# tools/mutation.sh [GROUP...]: mutation testing (mutmut 3) of the modules that carry the mission,
# a few modules at a time, each against only the test files that cover it, so that one mutant's
# run takes seconds. Without GROUP, every group whose mutants take seconds (not the train/fit.py groups,
# whose mutants retrain runs: name them). docs/testing.md has the scores and why mutmut.
#
#   pip install 'mutmut==3.8.1'
#   CPU_RUN=/work/brief/cpu-run tools/mutation.sh rle metrics   # CPU_RUN: a wrapper for heavy jobs
#
# Each group runs in its own copy of the repository (build/mutation/GROUP; mutmut writes its
# mutants/ folder there) and leaves GROUP.txt (every mutant with its verdict) and a summary line
# in build/mutation/summary.txt: group, killed, survived, other (timeout, suspicious, no tests), score.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${MUTATION_WORK:-$ROOT/build/mutation}
RUN=${CPU_RUN:-}
PYTHON=${PYTHON:-python}
LIMIT=${MUTATION_GROUP_TIMEOUT:-900}  # seconds per group; a group cut short scores the mutants it checked

# group -> modules mutated, the test files that cover them, and (optional) mutant name globs to run.
# train/fit.py is split into groups by function (fit: _setup_run; fit_build; fit_epochs, fit_core: samples;
# fit_finish): its mutants retrain runs.
declare -A MODULES TESTS NAMES
MODULES[rle]="segkit/io/rle.py"
TESTS[rle]="tests/test_rle.py tests/test_rle_csv_conventions.py"
MODULES[metrics]="segkit/metrics/seg.py segkit/metrics/objects.py"
TESTS[metrics]="tests/test_metrics.py tests/test_metrics_objects.py tests/test_metrics_scores.py"
MODULES[tta]="segkit/infer/tta.py"
TESTS[tta]="tests/test_tta.py tests/test_predict.py"
MODULES[checkpoint]="segkit/runs/checkpoint.py"
TESTS[checkpoint]="tests/test_checkpoint.py tests/test_predict.py"  # test_predict: checkpoint selection
MODULES[watershed]="segkit/post/watershed.py"
TESTS[watershed]="tests/test_instances.py tests/test_watershed.py"
MODULES[tiling]="segkit/infer/tiling.py"
TESTS[tiling]="tests/test_tiling.py tests/test_predict.py tests/test_predict_tiles.py"
MODULES[predict]="segkit/infer/predict.py segkit/infer/ensemble.py"
# the cls-gate tile weights: test_predict's gated-predictor test (test_seg_cls trains a run per mutant: too slow)
TESTS[predict]="tests/test_predict.py tests/test_predict_tiles.py"
MODULES[writers]="segkit/io/writers/strips.py segkit/io/writers/ome.py segkit/io/writers/polygons.py segkit/io/writers/geojson.py"
TESTS[writers]="tests/test_writers.py tests/test_tiff_outputs.py tests/test_vector.py"
MODULES[objects]="segkit/io/writers/instance_rle.py segkit/io/writers/instance_polygons.py segkit/io/writers/qupath.py"
TESTS[objects]="tests/test_instances.py tests/test_object_writers.py tests/test_qupath.py tests/test_vector.py"
MODULES[loop]="segkit/train/loop.py"
TESTS[loop]="tests/test_loop.py tests/test_loop_exact.py tests/test_loop_paths.py"
MODULES[fit]="segkit/train/fit.py"
TESTS[fit]="tests/test_learning.py"
NAMES[fit]="*_setup_run__mutmut_*"
# the epoch loop, resume, validation, weight average and failure record: every mutant retrains runs (~35 s with
# these tests), so the loop, resume and validation are sampled (mutants numbered *0 and *5: a fifth)
MODULES[fit_epochs]="segkit/train/fit.py"
TESTS[fit_epochs]="tests/test_learning.py tests/test_resume.py tests/test_fit.py::test_nan_loss_stops_keeps_the_last_good_checkpoint_and_marks_failed tests/test_fit.py::test_ema_freeze_subset_sgd_cosine_floor_and_early_stopping tests/test_interrupts.py::test_sigterm_to_train_is_one_line_143_and_the_run_resumes tests/test_fit_parts.py::test_each_epoch_trains_with_the_stage_settings_and_a_plain_run_averages_its_own_weights"
NAMES[fit_epochs]="*_run_epochs__mutmut_*[05] *_restore__mutmut_*[05] *_validate_epoch__mutmut_*[05]"
MODULES[fit_core]="segkit/train/fit.py"   # fit() and _fit(), the stage's order: a tenth (mutants numbered *0)
TESTS[fit_core]="${TESTS[fit_epochs]}"
NAMES[fit_core]="*_fit__mutmut_*0"
MODULES[fit_finish]="segkit/train/fit.py"
TESTS[fit_finish]="${TESTS[fit_epochs]}"
NAMES[fit_finish]="*_finish_average__mutmut_* *_fail__mutmut_*"
MODULES[fit_build]="segkit/train/fit.py"   # _build alone (a mutant retrains the learned run: ~10 s each)
TESTS[fit_build]="tests/test_learning.py tests/test_fit_parts.py tests/test_gpu_ready.py"
NAMES[fit_build]="*_build__mutmut_* *_sync_batchnorm__mutmut_*"

groups=("$@")
[ ${#groups[@]} -eq 0 ] && groups=(checkpoint rle tta predict metrics watershed writers objects tiling loop)
mkdir -p "$WORK"
for group in "${groups[@]}"; do
  [ -n "${MODULES[$group]:-}" ] || { echo "unknown group $group (known: ${!MODULES[*]})" >&2; exit 2; }
  dir=$WORK/$group
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | grep -zv '^tools/mutation' \
     | xargs -0 cp -a --parents -t "$dir")
  {
    cat "$ROOT/setup.cfg"
    echo; echo "[mutmut]"; echo "source_paths = segkit"
    echo "only_mutate ="; for m in ${MODULES[$group]}; do echo "    $m"; done
    echo "pytest_add_cli_args_test_selection ="; for t in ${TESTS[$group]}; do echo "    $t"; done
    printf 'pytest_add_cli_args =\n    -p\n    no:cacheprovider\n    -m\n    not slow\n'
    echo "process_isolation = forkserver"   # torch is not fork-safe after the stats run
  } > "$dir/setup.cfg"
  echo "== $group: ${MODULES[$group]} <- ${TESTS[$group]}"
  start=$(date +%s)
  (cd "$dir" && set -f && HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 $RUN timeout "$LIMIT" "$PYTHON" -m mutmut run --max-children 1 ${NAMES[$group]:-}) \
    > "$WORK/$group.log" 2>&1 || echo "mutmut run exited $? (see $WORK/$group.log)"
  (cd "$dir" && "$PYTHON" -m mutmut results --all true) > "$WORK/$group.txt" 2>/dev/null || true
  killed=$(grep -c ': killed$' "$WORK/$group.txt" || true)
  survived=$(grep -c ': survived$' "$WORK/$group.txt" || true)
  total=$(grep ': ' "$WORK/$group.txt" | grep -vc ': not checked$' || true)  # mutants filtered out: not checked
  other=$((total - killed - survived))
  score=$(awk -v k="$killed" -v t="$total" 'BEGIN { if (t > 0) printf "%.0f%%", 100 * k / t; else print "-" }')
  line="$group killed $killed survived $survived other $other score $score ($(( $(date +%s) - start )) s wall)"
  echo "$line" | tee -a "$WORK/summary.txt"
done
