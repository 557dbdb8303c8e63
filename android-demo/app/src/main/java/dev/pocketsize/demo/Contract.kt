package dev.pocketsize.demo

/**
 * The benchmark mode's intent extras, output file names and report schema.
 *
 * These literals mirror benchmarks/app_contract.json in the pocketsize
 * repository (android.extras, files, result_schema, result_schema_version);
 * tests/test_apps_contract.py greps this file and fails when they differ.
 */
object Contract {
    const val EXTRA_ARTIFACT = "pocketsize.artifact"
    const val EXTRA_FORMAT = "pocketsize.format"
    const val EXTRA_OUT_DIR = "pocketsize.out_dir"
    const val EXTRA_WARMUP = "pocketsize.warmup"
    const val EXTRA_ITERATIONS = "pocketsize.iterations"
    const val EXTRA_MIN_DURATION_MS = "pocketsize.min_duration_ms"
    const val EXTRA_THREADS = "pocketsize.threads"
    const val EXTRA_INPUT_SHAPE = "pocketsize.input_shape"
    const val EXTRA_EVAL_INPUT = "pocketsize.eval_input"
    const val EXTRA_EVAL_COUNT = "pocketsize.eval_count"
    const val EXTRA_RUN_ID = "pocketsize.run_id"

    const val DEFAULT_WARMUP = 5
    const val DEFAULT_ITERATIONS = 30
    const val DEFAULT_MIN_DURATION_MS = 0
    const val DEFAULT_THREADS = 1
    const val DEFAULT_EVAL_COUNT = 0

    const val FILE_REPORT = "report.json"
    const val FILE_TIMES = "times.txt"
    const val FILE_EVAL_OUTPUTS = "eval_outputs.bin"
    const val FILE_PROC_STATUS = "status.txt"
    const val FILE_PROC_SMAPS_ROLLUP = "smaps_rollup.txt"

    const val RESULT_SCHEMA = "pocketsize.app-result"
    const val RESULT_SCHEMA_VERSION = 1

    const val FORMAT_EXECUTORCH = "executorch"
    const val FORMAT_ONNX = "onnx"
}
