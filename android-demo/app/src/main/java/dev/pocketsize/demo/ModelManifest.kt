package dev.pocketsize.demo

import java.io.File
import org.json.JSONObject

/** The parts of `pocketsize export`'s manifest.json the app needs. */
data class Preprocessing(
    val channels: Int,
    val height: Int,
    val width: Int,
    val mean: FloatArray,
    val std: FloatArray,
    val interpolation: String,
    val cropPct: Float
) {
    val inputShape: LongArray get() = longArrayOf(1, channels.toLong(), height.toLong(), width.toLong())
    val inputSize: Int get() = channels * height * width
}

data class ArtifactEntry(val format: String, val path: String, val quantize: String)

data class ModelManifest(
    val preprocessing: Preprocessing,
    val labels: List<String>,
    val artifacts: List<ArtifactEntry>
) {
    /** The first artifact of [format], preferring the float one over int8. */
    fun artifactFor(format: String): ArtifactEntry? =
        artifacts.filter { it.format == format }.minByOrNull { if (it.quantize == "none") 0 else 1 }

    companion object {
        fun parse(text: String): ModelManifest {
            val root = JSONObject(text)
            val pre = root.getJSONObject("preprocessing")
            val layout = pre.optString("layout", "NCHW")
            require(layout == "NCHW") { "manifest preprocessing.layout is $layout; this app feeds NCHW" }
            val color = pre.optString("color", "RGB")
            require(color == "RGB") { "manifest preprocessing.color is $color; this app feeds RGB" }
            val size = pre.getJSONArray("input_size")
            val mean = pre.getJSONArray("mean")
            val std = pre.getJSONArray("std")
            val preprocessing = Preprocessing(
                channels = size.getInt(0),
                height = size.getInt(1),
                width = size.getInt(2),
                mean = FloatArray(mean.length()) { mean.getDouble(it).toFloat() },
                std = FloatArray(std.length()) { std.getDouble(it).toFloat() },
                interpolation = pre.optString("interpolation", "bilinear"),
                cropPct = pre.optDouble("crop_pct", 1.0).toFloat()
            )
            val labelsJson = root.optJSONArray("labels")
            val labels = if (labelsJson == null) emptyList() else List(labelsJson.length()) { labelsJson.getString(it) }
            val arts = root.getJSONArray("artifacts")
            val artifacts = List(arts.length()) {
                val a = arts.getJSONObject(it)
                ArtifactEntry(a.getString("format"), a.getString("path"), a.optString("quantize", "none"))
            }
            return ModelManifest(preprocessing, labels, artifacts)
        }

        fun read(file: File): ModelManifest = parse(file.readText())
    }
}
