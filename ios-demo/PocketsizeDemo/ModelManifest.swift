import Foundation

/// The parts of `pocketsize export`'s manifest.json the classifier needs.
struct ModelManifest: Decodable {
    struct Preprocessing: Decodable {
        var input_size: [Int]          // [3, H, W]
        var mean: [Float]
        var std: [Float]
        var interpolation: String?
        var crop_pct: Float?
        var layout: String?
        var color: String?
    }

    struct Artifact: Decodable {
        var format: String
        var path: String
        var quantize: String?
    }

    var preprocessing: Preprocessing
    var labels: [String]?
    var artifacts: [Artifact]

    /// The first artifact of `format`, preferring the float one over int8.
    func artifact(for format: String) -> Artifact? {
        func rank(_ a: Artifact) -> Int { (a.quantize ?? "none") == "none" ? 0 : 1 }
        return artifacts.filter { $0.format == format }.min { rank($0) < rank($1) }
    }

    static func load(_ url: URL) throws -> ModelManifest {
        let m = try JSONDecoder().decode(ModelManifest.self, from: Data(contentsOf: url))
        guard (m.preprocessing.layout ?? "NCHW") == "NCHW", (m.preprocessing.color ?? "RGB") == "RGB",
              m.preprocessing.input_size.count == 3, m.preprocessing.input_size[0] == 3
        else { throw BenchError.unsupported("manifest preprocessing must be RGB NCHW with 3 channels") }
        return m
    }
}
