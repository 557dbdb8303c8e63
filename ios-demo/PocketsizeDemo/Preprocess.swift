import CoreGraphics
import UIKit

/// Image -> float32 NCHW tensor, following the manifest's preprocessing: resize
/// the shorter side to size / crop_pct, center-crop to H x W, scale to [0, 1],
/// then (x - mean) / std per RGB channel (timm's eval transform). Core
/// Graphics' high-quality interpolation stands in for bicubic/bilinear.
enum Preprocess {
    static func tensor(from image: UIImage, _ pre: ModelManifest.Preprocessing) -> [Float]? {
        guard let cg = image.cgImage else { return nil }
        let h = pre.input_size[1], w = pre.input_size[2]
        let side = Float(max(h, w)) / (pre.crop_pct ?? 1)
        let scale = CGFloat(side) / CGFloat(min(cg.width, cg.height))
        let dw = CGFloat(cg.width) * scale, dh = CGFloat(cg.height) * scale
        var pixels = [UInt8](repeating: 0, count: w * h * 4)
        let drawn: Bool = pixels.withUnsafeMutableBytes { buf in
            guard let ctx = CGContext(data: buf.baseAddress, width: w, height: h, bitsPerComponent: 8,
                                      bytesPerRow: w * 4, space: CGColorSpaceCreateDeviceRGB(),
                                      bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)
            else { return false }
            ctx.interpolationQuality = .high
            // Centered draw of the scaled image = resize + center crop in one step.
            ctx.draw(cg, in: CGRect(x: (CGFloat(w) - dw) / 2, y: (CGFloat(h) - dh) / 2, width: dw, height: dh))
            return true
        }
        guard drawn else { return nil }
        let plane = w * h
        var out = [Float](repeating: 0, count: 3 * plane)
        for i in 0..<plane {
            for c in 0..<3 {
                out[c * plane + i] = (Float(pixels[4 * i + c]) / 255 - pre.mean[c]) / pre.std[c]
            }
        }
        return out
    }

    static func softmax(_ logits: [Float]) -> [Float] {
        guard let m = logits.max() else { return logits }
        let e = logits.map { expf($0 - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }
}
