import CoreML
import ExecuTorch
import Foundation

/// The first output of one inference: values (row-major) and shape.
struct Output {
    var data: [Float]
    var shape: [Int]
}

/// One loaded model: float32 NCHW input in, first output (logits) out.
protocol ModelRunner: AnyObject {
    /// Runtime name for report.json (`executorch` / `coreml`).
    var runtime: String { get }
    var runtimeVersion: String { get }
    /// Threads actually applied, or nil where the runtime has no thread knob.
    var threadsApplied: Int? { get }
    var notes: [String] { get }
    func run(_ input: [Float], shape: [Int]) throws -> Output
}

enum Runners {
    /// ExecuTorch Swift PM branch in project.yml is "swiftpm-\(executorchVersion)"
    /// (tests/test_apps_contract.py checks they agree with pyproject's executorch pin).
    static let executorchVersion = "1.5.1"

    static func open(format: String, url: URL, threads: Int) throws -> ModelRunner {
        switch format {
        case Contract.formatExecuTorch: return try ExecuTorchRunner(url: url)
        case Contract.formatCoreML: return try CoreMLRunner(url: url)
        default: throw BenchError.unsupported("format \(format) does not run on iOS; use executorch or coreml")
        }
    }
}

/// ExecuTorch's Swift API (Module / Tensor<Float>), XNNPACK backend linked in.
final class ExecuTorchRunner: ModelRunner {
    let runtime = "executorch"
    let runtimeVersion = "executorch-swiftpm \(Runners.executorchVersion)"
    let threadsApplied: Int? = nil
    let notes = ["the ExecuTorch Swift API has no thread-count setting; XNNPACK used its default threadpool"]
    private let module: Module

    init(url: URL) throws {
        // mmap keeps the weights file-backed, as a shipping app would load them.
        module = Module(filePath: url.path, loadMode: .mmap)
        // Load the method now so load_ms covers it and the first forward() is
        // the first inference, not lazy loading.
        try module.load("forward")
    }

    func run(_ input: [Float], shape: [Int]) throws -> Output {
        let output: Tensor<Float> = try module.forward(Tensor<Float>(input, shape: shape))
        return Output(data: output.scalars(), shape: output.shape)
    }
}

/// Core ML: an .mlpackage is compiled on the device (counted in load_ms), an
/// .mlmodelc is loaded as it is.
final class CoreMLRunner: ModelRunner {
    let runtime = "coreml"
    let runtimeVersion = "Core ML, \(ProcessInfo.processInfo.operatingSystemVersionString)"
    let threadsApplied: Int? = nil
    let notes = ["Core ML has no thread-count setting; computeUnits = .all (CPU, GPU, Neural Engine)"]
    private let model: MLModel
    private let inputName: String
    private let outputName: String

    init(url: URL, computeUnits: MLComputeUnits = .all) throws {
        let compiled = url.pathExtension == "mlmodelc" ? url : try MLModel.compileModel(at: url)
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        model = try MLModel(contentsOf: compiled, configuration: config)
        let description = model.modelDescription
        guard let input = description.inputDescriptionsByName.first(where: { $0.value.type == .multiArray })?.key,
              let output = description.outputDescriptionsByName.first(where: { $0.value.type == .multiArray })?.key
        else { throw BenchError.unsupported("the Core ML model needs one multi-array input and output") }
        inputName = input
        outputName = output
    }

    func run(_ input: [Float], shape: [Int]) throws -> Output {
        let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .float32)
        array.withUnsafeMutableBufferPointer(ofType: Float.self) { dst, _ in
            // A freshly allocated MLMultiArray is contiguous, row-major.
            _ = input.withUnsafeBufferPointer { src in memcpy(dst.baseAddress!, src.baseAddress!, 4 * src.count) }
        }
        let features = try MLDictionaryFeatureProvider(dictionary: [inputName: MLFeatureValue(multiArray: array)])
        let result = try model.prediction(from: features)
        guard let out = result.featureValue(for: outputName)?.multiArrayValue else {
            throw BenchError.runtime("Core ML returned no \(outputName)")
        }
        // Outputs may be float16 or float32; NSNumber access handles both.
        let data = (0..<out.count).map { out[$0].floatValue }
        return Output(data: data, shape: out.shape.map { $0.intValue })
    }
}
