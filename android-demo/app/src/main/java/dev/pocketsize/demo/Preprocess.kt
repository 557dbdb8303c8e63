package dev.pocketsize.demo

import android.graphics.Bitmap
import kotlin.math.roundToInt

/**
 * Image -> float32 NCHW tensor, following the manifest's preprocessing:
 * resize the shorter side to size / crop_pct, center-crop to H x W, scale to
 * [0, 1], then (x - mean) / std per RGB channel. This mirrors timm's eval
 * transform. Android's Bitmap scaler is bilinear; a manifest asking for
 * bicubic gets bilinear here (a small, documented numeric difference).
 */
object Preprocess {
    fun toTensor(src: Bitmap, pre: Preprocessing): FloatArray {
        require(pre.channels == 3) { "this app feeds RGB images; the manifest asks for ${pre.channels} channels" }
        val scale = maxOf(pre.height, pre.width) / pre.cropPct
        val shorter = minOf(src.width, src.height).toFloat()
        val rw = maxOf(pre.width, (src.width * scale / shorter).roundToInt())
        val rh = maxOf(pre.height, (src.height * scale / shorter).roundToInt())
        val resized = Bitmap.createScaledBitmap(src, rw, rh, true) // filter = true: bilinear
        val left = (rw - pre.width) / 2
        val top = (rh - pre.height) / 2
        val pixels = IntArray(pre.width * pre.height)
        resized.getPixels(pixels, 0, pre.width, left, top, pre.width, pre.height)
        return normalize(pixels, pre)
    }

    /** ARGB_8888 pixels (row-major H x W) -> normalized NCHW floats. */
    fun normalize(pixels: IntArray, pre: Preprocessing): FloatArray {
        val plane = pre.height * pre.width
        val out = FloatArray(3 * plane)
        for (i in 0 until plane) {
            val p = pixels[i]
            out[i] = (((p shr 16) and 0xFF) / 255f - pre.mean[0]) / pre.std[0]
            out[plane + i] = (((p shr 8) and 0xFF) / 255f - pre.mean[1]) / pre.std[1]
            out[2 * plane + i] = ((p and 0xFF) / 255f - pre.mean[2]) / pre.std[2]
        }
        return out
    }

    fun softmax(logits: FloatArray): FloatArray {
        val max = logits.maxOrNull() ?: return logits
        val exps = FloatArray(logits.size) { kotlin.math.exp(logits[it] - max) }
        val sum = exps.sum()
        return FloatArray(exps.size) { exps[it] / sum }
    }
}
