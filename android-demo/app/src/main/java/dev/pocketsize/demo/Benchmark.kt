package dev.pocketsize.demo

import android.os.Build
import android.os.Debug
import android.os.SystemClock
import java.io.File
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel
import org.json.JSONArray
import org.json.JSONObject

/** What `am start` passed (names in Contract / app_contract.json). */
data class BenchParams(
    val artifact: String,
    val format: String,
    val outDir: String,
    val warmup: Int,
    val iterations: Int,
    val minDurationMs: Int,
    val threads: Int,
    val inputShape: LongArray,
    val evalInput: String?,
    val evalCount: Int,
    val runId: String
)

/**
 * The benchmark mode, following pocketsize's runner protocol
 * (benchmarks/devices/base.py): load (timed), one cold inference (timed),
 * `warmup` untimed runs, then timed runs until both `iterations` and
 * `min_duration_ms` are reached, each appended to times.txt as it happens;
 * eval outputs to eval_outputs.bin; /proc/self/status and smaps_rollup copied;
 * report.json written last (tmp + rename), so its presence means "done".
 * Statistics and accuracy are computed on the host, as for every device.
 */
class Benchmark(private val p: BenchParams) {
    private val out = File(p.outDir)
    private val pss = JSONObject()

    fun run(): JSONObject {
        out.mkdirs()
        val report = JSONObject()
            .put("schema", Contract.RESULT_SCHEMA)
            .put("schema_version", Contract.RESULT_SCHEMA_VERSION)
            .put("run_id", p.runId)
            .put("status", "failed").put("error", JSONObject.NULL)
            .put("runtime", runtimeName(p.format)).put("runtime_version", JSONObject.NULL)
            .put("load_ms", JSONObject.NULL).put("first_inference_ms", JSONObject.NULL)
            .put("output_shape", JSONObject.NULL).put("eval_count", 0).put("threads", p.threads)
            .put(
                "app",
                JSONObject().put("name", "pocketsize-android-demo")
                    .put("version", BuildConfig.VERSION_NAME).put("platform", "android")
            )
            .put("device", deviceInfo())
        try {
            measure(report)
            report.put("status", "ok")
        } catch (t: Throwable) {
            // A failed run still writes report.json: the driver reports this
            // error instead of waiting out its timeout.
            report.put("error", "${t.javaClass.simpleName}: ${t.message}")
        }
        copyProc()
        report.put("android_pss_kb", pss)
        writeAtomically(File(out, Contract.FILE_REPORT), report.toString(2))
        return report
    }

    private fun measure(report: JSONObject) {
        val size = p.inputShape.fold(1L) { a, d -> a * d }.toInt()
        // Timed input: zeros (the normalized mean image); latency does not depend on values.
        val input = FloatArray(size)
        pss.put("idle", totalPssKb())

        val t0 = SystemClock.elapsedRealtimeNanos()
        ModelRunner.open(p.format, p.artifact, p.threads).use { runner ->
            report.put("load_ms", msSince(t0)).put("runtime", runner.runtime)
                .put("runtime_version", runner.runtimeVersion)
            pss.put("after_load", totalPssKb())

            val t1 = SystemClock.elapsedRealtimeNanos()
            val first = runner.run(input, p.inputShape)
            report.put("first_inference_ms", msSince(t1)).put("output_shape", JSONArray(first.shape.toList()))

            repeat(p.warmup) { runner.run(input, p.inputShape) }

            File(out, Contract.FILE_TIMES).bufferedWriter().use { times ->
                val start = SystemClock.elapsedRealtimeNanos()
                var n = 0
                while (n < p.iterations || msSince(start) < p.minDurationMs) {
                    val t = SystemClock.elapsedRealtimeNanos()
                    runner.run(input, p.inputShape)
                    val ms = msSince(t)
                    times.write("t %.6f\n".format(java.util.Locale.ROOT, ms))
                    times.flush() // a crash mid-run keeps every measured line
                    n++
                }
            }
            pss.put("after_run", totalPssKb())
            Debug.MemoryInfo().also { Debug.getMemoryInfo(it) }.let { mi ->
                mi.getMemoryStat("summary.native-heap")?.toIntOrNull()?.let { pss.put("native_heap", it) }
                mi.getMemoryStat("summary.java-heap")?.toIntOrNull()?.let { pss.put("java_heap", it) }
                mi.getMemoryStat("summary.code")?.toIntOrNull()?.let { pss.put("code", it) }
            }

            if (p.evalInput != null && p.evalCount > 0) {
                report.put("eval_count", evaluate(runner, size))
            }
        }
    }

    /** Runs every pushed eval input; writes the outputs as raw little-endian float32. */
    private fun evaluate(runner: ModelRunner, size: Int): Int {
        val x = RandomAccessFile(p.evalInput, "r").use {
            it.channel.map(FileChannel.MapMode.READ_ONLY, 0, it.length())
        }.order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
        require(x.capacity() == p.evalCount * size) {
            "eval input holds ${x.capacity()} floats, expected ${p.evalCount} x $size"
        }
        val sample = FloatArray(size)
        File(out, Contract.FILE_EVAL_OUTPUTS).outputStream().buffered().use { os ->
            for (i in 0 until p.evalCount) {
                x.position(i * size)
                x.get(sample)
                val y = runner.run(sample, p.inputShape).data
                val bytes = ByteBuffer.allocate(4 * y.size).order(ByteOrder.LITTLE_ENDIAN)
                bytes.asFloatBuffer().put(y)
                os.write(bytes.array())
            }
        }
        return p.evalCount
    }

    private fun copyProc() {
        for ((src, dst) in listOf(
            "/proc/self/status" to Contract.FILE_PROC_STATUS,
            "/proc/self/smaps_rollup" to Contract.FILE_PROC_SMAPS_ROLLUP
        )) {
            runCatching { File(out, dst).writeText(File(src).readText()) }
        }
    }

    private fun totalPssKb(): Int = Debug.MemoryInfo().also { Debug.getMemoryInfo(it) }.totalPss

    private fun msSince(startNanos: Long) = (SystemClock.elapsedRealtimeNanos() - startNanos) / 1e6

    companion object {
        fun runtimeName(format: String) = if (format == Contract.FORMAT_ONNX) "onnxruntime" else "executorch"

        fun deviceInfo(): JSONObject {
            val cpu = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) {
                "${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}"
            } else {
                Build.HARDWARE
            }
            return JSONObject()
                .put("kind", "adb")
                .put("name", "${Build.MANUFACTURER} ${Build.MODEL}")
                .put("os", "Android ${Build.VERSION.RELEASE} (API ${Build.VERSION.SDK_INT})")
                .put("arch", Build.SUPPORTED_ABIS.firstOrNull() ?: JSONObject.NULL)
                .put("cpu", cpu)
                .put("emulated", isEmulator())
        }

        /** The Android emulator's tell-tale build fields (goldfish/ranchu kernels, sdk products). */
        fun isEmulator(): Boolean = Build.HARDWARE in setOf("goldfish", "ranchu") ||
            Build.FINGERPRINT.startsWith("generic") ||
            Build.PRODUCT.contains("sdk")

        fun writeAtomically(target: File, text: String) {
            val tmp = File(target.parentFile, "${target.name}.tmp")
            tmp.writeText(text)
            if (!tmp.renameTo(target)) throw java.io.IOException("cannot rename $tmp to $target")
        }
    }
}
