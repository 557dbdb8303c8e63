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
    /// ExecuTorch Swift PM branch in project.yml is "swiftpm-\(executorchVersion)", the
    /// runtime release for pyproject's executorch pin (tests/test_apps_contract.py checks both).
    static let executorchVersion = "1.5.0"

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
        // Swift rejects `try` to the right of `?:`, hence the if/else. The
        // synchronous compileModel(at:) is deprecated since iOS 16 in favour of
        // the async one but still available; init stays synchronous so load_ms
        // covers compile + load in one timed call.
        let compiled: URL
        if url.pathExtension == "mlmodelc" {
            compiled = url
        } else {
            compiled = try MLModel.compileModel(at: url)
        }
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
        let rowMajor = CoreMLRunner.rowMajorStrides(shape)
        try array.withUnsafeMutableBufferPointer(ofType: Float.self) { dst, strides in
            // Apple: the storage "may not store these scalar values contiguously";
            // copy in one go only when it is plain row-major, as a fresh array is.
            guard strides == rowMajor, dst.count >= input.count else {
                throw BenchError.runtime("Core ML input buffer is not row-major (strides \(strides))")
            }
            _ = input.withUnsafeBufferPointer { src in memcpy(dst.baseAddress!, src.baseAddress!, 4 * src.count) }
        }
        let features = try MLDictionaryFeatureProvider(dictionary: [inputName: MLFeatureValue(multiArray: array)])
        let result = try model.prediction(from: features)
        guard let out = result.featureValue(for: outputName)?.multiArrayValue else {
            throw BenchError.runtime("Core ML returned no \(outputName)")
        }
        // out[offset] indexes the storage, offset = sum(index[d] * strides[d])
        // (Apple's MLMultiArray subscript(_:) documentation), and outputs may be
        // padded, so walk the logical indices in row-major order. NSNumber access
        // reads float16 and float32 outputs alike.
        let outShape = out.shape.map { $0.intValue }
        let outStrides = out.strides.map { $0.intValue }
        var data = [Float](repeating: 0, count: out.count)
        for i in 0..<out.count {
            var rest = i
            var offset = 0
            for d in stride(from: outShape.count - 1, through: 0, by: -1) {
                offset += (rest % outShape[d]) * outStrides[d]
                rest /= outShape[d]
            }
            data[i] = out[offset].floatValue
        }
        return Output(data: data, shape: outShape)
    }

    /// Strides of a contiguous row-major array of `shape`, in elements.
    static func rowMajorStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        for d in stride(from: shape.count - 2, through: 0, by: -1) {
            strides[d] = strides[d + 1] * shape[d + 1]
        }
        return strides
    }
}
