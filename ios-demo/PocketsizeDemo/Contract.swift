import Foundation

/// The benchmark mode's launch arguments, XCTest environment, output files and
/// report schema. These literals mirror benchmarks/app_contract.json in the
/// pocketsize repository (ios.launch_arguments, ios.xctest_env, files,
/// result_schema, result_schema_version); tests/test_apps_contract.py greps
/// this file and fails when they differ.
enum Contract {
    /// Contract parameter -> (launch-argument / UserDefaults key, XCTest environment variable).
    static let params: [String: (argument: String, env: String)] = [
        "artifact": ("pocketsize.artifact", "POCKETSIZE_ARTIFACT"),
        "format": ("pocketsize.format", "POCKETSIZE_FORMAT"),
        "out_dir": ("pocketsize.out_dir", "POCKETSIZE_OUT_DIR"),
        "warmup": ("pocketsize.warmup", "POCKETSIZE_WARMUP"),
        "iterations": ("pocketsize.iterations", "POCKETSIZE_ITERATIONS"),
        "min_duration_ms": ("pocketsize.min_duration_ms", "POCKETSIZE_MIN_DURATION_MS"),
        "threads": ("pocketsize.threads", "POCKETSIZE_THREADS"),
        "input_shape": ("pocketsize.input_shape", "POCKETSIZE_INPUT_SHAPE"),
        "eval_input": ("pocketsize.eval_input", "POCKETSIZE_EVAL_INPUT"),
        "eval_count": ("pocketsize.eval_count", "POCKETSIZE_EVAL_COUNT"),
        "run_id": ("pocketsize.run_id", "POCKETSIZE_RUN_ID"),
    ]

    static let defaults: [String: Int] = [
        "warmup": 5, "iterations": 30, "min_duration_ms": 0, "threads": 1, "eval_count": 0,
    ]

    static let fileReport = "report.json"
    static let fileTimes = "times.txt"
    static let fileEvalOutputs = "eval_outputs.bin"

    static let resultSchema = "pocketsize.app-result"
    static let resultSchemaVersion = 1

    static let formatExecuTorch = "executorch"
    static let formatCoreML = "coreml"
}

/// Benchmark parameters, from launch arguments (app launched by devicectl) or
/// from the environment (XCTest run by xcodebuild with TEST_RUNNER_ variables).
struct BenchParams {
    var artifact: URL
    var format: String
    var outDir: URL
    var warmup: Int
    var iterations: Int
    var minDurationMs: Int
    var threads: Int
    var inputShape: [Int]
    var evalInput: URL?
    var evalCount: Int
    var runId: String

    enum Source { case launchArguments, environment }

    /// nil when the required parameters are absent (the app then starts in classify mode).
    static func read(from source: Source) throws -> BenchParams? {
        func value(_ name: String) -> String? {
            guard let keys = Contract.params[name] else { return nil }
            let v: String?
            switch source {
            case .launchArguments: v = UserDefaults.standard.string(forKey: keys.argument)
            case .environment: v = ProcessInfo.processInfo.environment[keys.env]
            }
            return (v?.isEmpty ?? true) ? nil : v
        }
        guard let artifact = value("artifact"), let runId = value("run_id") else { return nil }
        func required(_ name: String) throws -> String {
            guard let v = value(name) else { throw BenchError.badParameter("missing \(name)") }
            return v
        }
        func int(_ name: String) throws -> Int {
            guard let s = value(name) else { return Contract.defaults[name] ?? 0 }
            guard let i = Int(s), i >= 0 else { throw BenchError.badParameter("\(name)=\(s) is not a whole number") }
            return i
        }
        let shape = try required("input_shape").split(separator: ",").map { part -> Int in
            guard let d = Int(part.trimmingCharacters(in: .whitespaces)) else {
                throw BenchError.badParameter("bad input_shape")
            }
            return d
        }
        return BenchParams(
            artifact: resolve(artifact),
            format: try required("format"),
            outDir: resolve(try required("out_dir")),
            warmup: try int("warmup"),
            iterations: try int("iterations"),
            minDurationMs: try int("min_duration_ms"),
            threads: try int("threads"),
            inputShape: shape,
            evalInput: value("eval_input").map(resolve),
            evalCount: try int("eval_count"),
            runId: runId
        )
    }

    /// Relative paths are relative to the app container's home (the driver
    /// passes Documents/pocketsize/...: the container path differs per install).
    static func resolve(_ path: String) -> URL {
        path.hasPrefix("/") ? URL(fileURLWithPath: path)
            : URL(fileURLWithPath: NSHomeDirectory()).appendingPathComponent(path)
    }
}

enum BenchError: Error, CustomStringConvertible {
    case badParameter(String)
    case unsupported(String)
    case runtime(String)

    var description: String {
        switch self {
        case .badParameter(let s): return "bad parameter: \(s)"
        case .unsupported(let s): return "unsupported: \(s)"
        case .runtime(let s): return s
        }
    }
}
