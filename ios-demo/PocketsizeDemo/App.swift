import SwiftUI
import UIKit

/// Two modes: with `-pocketsize.*` launch arguments (devicectl) the app runs
/// the benchmark and writes its report; without them it is the classifier.
@main
struct PocketsizeDemoApp: App {
    var body: some Scene {
        WindowGroup {
            switch Result(catching: { try BenchParams.read(from: .launchArguments) }) {
            case .success(let params?): BenchmarkView(params: params)
            case .success(nil): ContentView()
            case .failure(let error): Text("bad benchmark arguments: \(String(describing: error))").padding()
            }
        }
    }
}

struct BenchmarkView: View {
    let params: BenchParams
    @State private var status = "pocketsize benchmark running…"

    var body: some View {
        Text(status)
            .padding()
            .onAppear {
                UIApplication.shared.isIdleTimerDisabled = true // no dimming mid-run
                DispatchQueue.global(qos: .userInitiated).async {
                    let report = Benchmark(params: params).run()
                    let done = "run \(params.runId): \(report["status"] ?? "?")"
                    DispatchQueue.main.async {
                        status = done
                        UIApplication.shared.isIdleTimerDisabled = false
                    }
                }
            }
    }
}
