package dev.pocketsize.demo

import android.app.Activity
import android.content.Intent
import android.os.Bundle
import android.util.Log
import android.view.WindowManager
import android.widget.TextView
import kotlin.concurrent.thread

/**
 * Benchmark mode, started over adb by `pocketsize bench --device adb`:
 *
 *   am start -W -S -n dev.pocketsize.demo/.BenchmarkActivity \
 *     --es pocketsize.artifact <path> --es pocketsize.format executorch \
 *     --ei pocketsize.iterations 30 ...
 *
 * Runs on a worker thread, writes the runner-protocol output into
 * `pocketsize.out_dir` (report.json last), then finishes.
 */
class BenchmarkActivity : Activity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        // Keep the screen on: a dozing phone throttles and skews the timings.
        window.addFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON)
        val status = TextView(this).apply {
            text = "pocketsize benchmark running…"
            setPadding(32, 32, 32, 32)
        }
        setContentView(status)

        val params = try {
            readParams(intent)
        } catch (e: IllegalArgumentException) {
            Log.e(TAG, "bad benchmark extras: ${e.message}")
            status.text = "bad extras: ${e.message}"
            finish()
            return
        }
        thread(name = "pocketsize-bench") {
            val report = Benchmark(params).run()
            Log.i(TAG, "run ${params.runId}: ${report.getString("status")} -> ${params.outDir}")
            runOnUiThread { finish() }
        }
    }

    companion object {
        private const val TAG = "pocketsize"

        fun readParams(intent: Intent): BenchParams {
            fun str(key: String): String = intent.getStringExtra(key)?.takeIf { it.isNotEmpty() }
                ?: throw IllegalArgumentException("missing extra $key")
            val shape = str(Contract.EXTRA_INPUT_SHAPE).split(',').map {
                it.trim().toLongOrNull() ?: throw IllegalArgumentException("bad ${Contract.EXTRA_INPUT_SHAPE}")
            }
            return BenchParams(
                artifact = str(Contract.EXTRA_ARTIFACT),
                format = str(Contract.EXTRA_FORMAT),
                outDir = str(Contract.EXTRA_OUT_DIR),
                warmup = intent.getIntExtra(Contract.EXTRA_WARMUP, Contract.DEFAULT_WARMUP),
                iterations = intent.getIntExtra(Contract.EXTRA_ITERATIONS, Contract.DEFAULT_ITERATIONS),
                minDurationMs = intent.getIntExtra(Contract.EXTRA_MIN_DURATION_MS, Contract.DEFAULT_MIN_DURATION_MS),
                threads = intent.getIntExtra(Contract.EXTRA_THREADS, Contract.DEFAULT_THREADS),
                inputShape = shape.toLongArray(),
                evalInput = intent.getStringExtra(Contract.EXTRA_EVAL_INPUT),
                evalCount = intent.getIntExtra(Contract.EXTRA_EVAL_COUNT, Contract.DEFAULT_EVAL_COUNT),
                runId = str(Contract.EXTRA_RUN_ID)
            )
        }
    }
}
