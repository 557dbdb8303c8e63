import PhotosUI
import SwiftUI
import UIKit

/// Classification mode: pick a photo (or take one) and classify it with the
/// model that `pocketsize export` bundled into the app at build time (the
/// "pocketsize" resource folder, see Scripts/pocketsize-export.sh).
struct ContentView: View {
    @StateObject private var model = Classifier()
    @State private var pick: PhotosPickerItem?
    @State private var showCamera = false
    @State private var image: UIImage?

    var body: some View {
        VStack(spacing: 16) {
            HStack {
                PhotosPicker("Pick image", selection: $pick, matching: .images)
                Button("Take photo") { showCamera = true }
                    .disabled(!UIImagePickerController.isSourceTypeAvailable(.camera))
            }
            if let image { Image(uiImage: image).resizable().scaledToFit().frame(maxHeight: 320) }
            Text(model.status).font(.body.monospaced()).frame(maxWidth: .infinity, alignment: .leading)
            Spacer()
        }
        .padding()
        .onChange(of: pick) { _, item in   // iOS 17 two-parameter form
            Task {
                if let data = try? await item?.loadTransferable(type: Data.self), let img = UIImage(data: data) {
                    image = img
                    model.classify(img)
                }
            }
        }
        .sheet(isPresented: $showCamera) {
            CameraPicker { img in image = img; model.classify(img) }
        }
        .task { model.loadBundled() }
    }
}

@MainActor
final class Classifier: ObservableObject {
    @Published var status = "loading model…"
    private var manifest: ModelManifest?
    private var runner: ModelRunner?

    func loadBundled() {
        guard let dir = Bundle.main.url(forResource: "pocketsize", withExtension: nil) else {
            status = "no model bundled: set POCKETSIZE_MODEL so the build phase runs `pocketsize export`"
            return
        }
        do {
            let m = try ModelManifest.load(dir.appendingPathComponent("manifest.json"))
            // Prefer Core ML (Neural Engine), fall back to ExecuTorch (XNNPACK).
            guard let art = m.artifact(for: Contract.formatCoreML) ?? m.artifact(for: Contract.formatExecuTorch) else {
                throw BenchError.unsupported("manifest.json lists no coreml or executorch artifact")
            }
            runner = try Runners.open(format: art.format, url: dir.appendingPathComponent(art.path), threads: 1)
            manifest = m
            status = "model: \(art.path) (\(runner!.runtimeVersion)), \(m.labels?.count ?? 0) classes"
        } catch {
            status = "cannot load the bundled model: \(error)"
        }
    }

    func classify(_ image: UIImage) {
        guard let m = manifest, let r = runner,
              let x = Preprocess.tensor(from: image, m.preprocessing) else { return }
        let shape = [1] + m.preprocessing.input_size
        do {
            let t0 = Benchmark.nowNs()
            let probs = Preprocess.softmax(try r.run(x, shape: shape).data)
            let ms = Benchmark.msSince(t0)
            let top = probs.indices.sorted { probs[$0] > probs[$1] }.prefix(5)
            status = top.map { i in
                let name = (m.labels?.indices.contains(i) ?? false) ? m.labels![i] : "class \(i)"
                return String(format: "%@  %.1f%%", name, probs[i] * 100)
            }.joined(separator: "\n") + String(format: "\n(%.1f ms)", ms)
        } catch {
            status = "inference failed: \(error)"
        }
    }
}

/// UIImagePickerController's camera, wrapped for SwiftUI.
struct CameraPicker: UIViewControllerRepresentable {
    var onImage: (UIImage) -> Void
    @Environment(\.dismiss) private var dismiss

    func makeUIViewController(context: Context) -> UIImagePickerController {
        let picker = UIImagePickerController()
        picker.sourceType = .camera
        picker.delegate = context.coordinator
        return picker
    }

    func updateUIViewController(_ controller: UIImagePickerController, context: Context) {}

    func makeCoordinator() -> Coordinator { Coordinator(self) }

    final class Coordinator: NSObject, UIImagePickerControllerDelegate, UINavigationControllerDelegate {
        let parent: CameraPicker
        init(_ parent: CameraPicker) { self.parent = parent }

        func imagePickerController(_ picker: UIImagePickerController,
                                   didFinishPickingMediaWithInfo info: [UIImagePickerController.InfoKey: Any]) {
            if let img = info[.originalImage] as? UIImage { parent.onImage(img) }
            parent.dismiss()
        }

        func imagePickerControllerDidCancel(_ picker: UIImagePickerController) { parent.dismiss() }
    }
}
