package dev.pocketsize.demo

import android.graphics.Bitmap
import android.graphics.ImageDecoder
import android.net.Uri
import android.os.Bundle
import android.widget.Button
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.TextView
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import java.io.File
import kotlin.concurrent.thread

/**
 * Classification mode: pick a photo (or take one) and classify it with the
 * model `pocketsize export` bundled into assets/pocketsize/ at build time.
 * Preprocessing and labels come from that export's manifest.json.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var image: ImageView
    private lateinit var output: TextView
    private var manifest: ModelManifest? = null
    private var runner: ModelRunner? = null

    private val pickImage = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        uri?.let { classify(decode(it)) }
    }
    private val takePhoto = registerForActivityResult(ActivityResultContracts.TakePicturePreview()) { bitmap ->
        bitmap?.let { classify(it) }
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val root = LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            setPadding(32, 32, 32, 32)
        }
        val pick = Button(this).apply { text = "Pick image" }
        val camera = Button(this).apply { text = "Take photo" }
        image = ImageView(this).apply {
            adjustViewBounds = true
            maxHeight = 900
        }
        output = TextView(this).apply { textSize = 16f }
        listOf(pick, camera, image, output).forEach(root::addView)
        setContentView(root)

        pick.setOnClickListener {
            pickImage.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        camera.setOnClickListener { takePhoto.launch(null) }
        loadBundledModel()
    }

    override fun onDestroy() {
        runner?.close()
        super.onDestroy()
    }

    private fun loadBundledModel() {
        output.text = "loading model…"
        thread(name = "pocketsize-load") {
            val status = try {
                val dir = copyAssets()
                val m = ModelManifest.read(File(dir, "manifest.json"))
                // Prefer ExecuTorch (XNNPACK), fall back to ONNX Runtime.
                val art = m.artifactFor(Contract.FORMAT_EXECUTORCH) ?: m.artifactFor(Contract.FORMAT_ONNX)
                    ?: error("manifest.json lists no executorch or onnx artifact")
                runner = ModelRunner.open(art.format, File(dir, art.path).path, Contract.DEFAULT_THREADS)
                manifest = m
                "model: ${art.path} (${runner!!.runtimeVersion}), ${m.labels.size} classes"
            } catch (e: Exception) {
                "no usable model bundled (${e.message}).\nBuild with -Ppocketsize.model=DIR so " +
                    "`pocketsize export` bundles one; the benchmark mode does not need it."
            }
            runOnUiThread { output.text = status }
        }
    }

    /** Copies assets/pocketsize/ to files/ (the runtimes load from a file path). */
    private fun copyAssets(): File {
        val dir = File(filesDir, "bundled")
        val names = assets.list("pocketsize")?.toList().orEmpty()
        require("manifest.json" in names) { "assets/pocketsize/manifest.json missing" }
        dir.mkdirs()
        for (name in names) {
            val target = File(dir, name)
            if (name.endsWith(".mlpackage")) continue // Core ML is iOS-only
            assets.open("pocketsize/$name").use { input -> target.outputStream().use { input.copyTo(it) } }
        }
        return dir
    }

    private fun decode(uri: Uri): Bitmap =
        ImageDecoder.decodeBitmap(ImageDecoder.createSource(contentResolver, uri)) { decoder, _, _ ->
            decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE // getPixels needs a software bitmap
        }

    private fun classify(bitmap: Bitmap) {
        val m = manifest
        val r = runner
        image.setImageBitmap(bitmap)
        if (m == null || r == null) return
        thread(name = "pocketsize-classify") {
            val t0 = System.nanoTime()
            val probs = Preprocess.softmax(
                r.run(Preprocess.toTensor(bitmap, m.preprocessing), m.preprocessing.inputShape).data
            )
            val ms = (System.nanoTime() - t0) / 1e6
            val top = probs.indices.sortedByDescending { probs[it] }.take(5)
            val text = top.joinToString("\n") { i ->
                val name = m.labels.getOrElse(i) { "class $i" }
                "%s  %.1f%%".format(name, probs[i] * 100)
            } + "\n(%.1f ms incl. preprocessing)".format(ms)
            runOnUiThread { output.text = text }
        }
    }
}
