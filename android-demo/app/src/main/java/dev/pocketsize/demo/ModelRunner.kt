package dev.pocketsize.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import java.io.Closeable
import java.nio.FloatBuffer
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/** The first output of one inference: values (row-major) and shape. */
class Output(val data: FloatArray, val shape: LongArray)

/** One loaded model: float32 NCHW input in, first output (logits) out. */
interface ModelRunner : Closeable {
    /** Runtime name for report.json (`executorch` / `onnxruntime`). */
    val runtime: String

    /** Version of the runtime library linked into the app. */
    val runtimeVersion: String

    /** Runs one batch-1 inference. */
    fun run(input: FloatArray, shape: LongArray): Output

    companion object {
        fun open(format: String, path: String, threads: Int): ModelRunner = when (format) {
            Contract.FORMAT_EXECUTORCH -> ExecuTorchRunner(path, threads)
            Contract.FORMAT_ONNX -> OnnxRunner(path, threads)
            else -> throw IllegalArgumentException("format $format does not run on Android; use executorch or onnx")
        }
    }
}

/** org.pytorch:executorch-android: Module.load + forward(EValue). */
class ExecuTorchRunner(path: String, threads: Int) : ModelRunner {
    override val runtime = "executorch"
    override val runtimeVersion = "executorch-android ${BuildConfig.EXECUTORCH_VERSION}"

    // mmap keeps the program's weights file-backed (counted in PSS only as
    // pages are touched), which is how a shipping app would load it.
    private val module: Module = Module.load(path, Module.LOAD_MODE_MMAP, threads)

    init {
        // Load the method now so load_ms covers program + method init and the
        // first forward() measures the first inference, not lazy loading.
        module.loadMethod("forward")
    }

    override fun run(input: FloatArray, shape: LongArray): Output {
        val out = module.forward(EValue.from(Tensor.fromBlob(input, shape)))[0].toTensor()
        return Output(out.dataAsFloatArray, out.shape())
    }

    override fun close() = module.destroy()
}

/** com.microsoft.onnxruntime:onnxruntime-android: OrtSession on the CPU EP. */
class OnnxRunner(path: String, threads: Int) : ModelRunner {
    override val runtime = "onnxruntime"
    override val runtimeVersion = "onnxruntime-android ${BuildConfig.ONNXRUNTIME_VERSION}"

    private val env: OrtEnvironment = OrtEnvironment.getEnvironment()
    private val options = OrtSession.SessionOptions().apply {
        if (threads > 0) setIntraOpNumThreads(threads)
        setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
    }
    private val session: OrtSession = env.createSession(path, options)
    private val inputName: String = session.inputNames.first()

    override fun run(input: FloatArray, shape: LongArray): Output {
        OnnxTensor.createTensor(env, FloatBuffer.wrap(input), shape).use { tensor ->
            session.run(mapOf(inputName to tensor)).use { result ->
                val out = result.get(0) as OnnxTensor
                val buf = out.floatBuffer
                return Output(FloatArray(buf.remaining()).also { buf.get(it) }, out.info.shape)
            }
        }
    }

    override fun close() {
        session.close()
        options.close()
    }
}
