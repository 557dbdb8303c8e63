import javax.inject.Inject

plugins {
    alias(libs.plugins.android.application)
}

android {
    namespace = "dev.pocketsize.demo"
    compileSdk = 36

    defaultConfig {
        // Must equal app_contract.json android.package (tests/test_apps_contract.py checks).
        applicationId = "dev.pocketsize.demo"
        minSdk = 28
        targetSdk = 36
        versionCode = 1
        versionName = "0.1.0"
        // The runtime versions go into results.json's `runtime` key.
        buildConfigField("String", "EXECUTORCH_VERSION", "\"${libs.versions.executorch.get()}\"")
        buildConfigField("String", "ONNXRUNTIME_VERSION", "\"${libs.versions.onnxruntime.get()}\"")
        ndk {
            // The executorch-android and onnxruntime-android AARs ship these two ABIs.
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            // Benchmarks are timed in release builds; signed with the debug key so
            // `adb install` works without a keystore. Do not publish this build.
            signingConfig = signingConfigs.getByName("debug")
        }
    }

    buildFeatures {
        buildConfig = true
    }

    compileOptions {
        // AGP 9's built-in Kotlin takes its JVM target from targetCompatibility,
        // so no kotlin { } block is needed (the kotlin-android plugin is not applied).
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    androidResources {
        // Model files are copied out of the APK to a real path at first use
        // (ExecuTorch and ONNX Runtime load from a file path); storing them
        // uncompressed keeps that copy a plain read.
        noCompress += listOf("pte", "onnx")
    }
}

dependencies {
    implementation(libs.executorch.android)
    implementation(libs.onnxruntime.android)
    implementation(libs.androidx.activity)
    implementation(libs.androidx.appcompat)
}

// ---------------------------------------------------------------------------
// Build-pipeline integration: `pocketsize export` runs as part of the app build
// and its output (manifest.json + model files) becomes the app's assets under
// assets/pocketsize/. Enabled when -Ppocketsize.model=... is set.
// ---------------------------------------------------------------------------

abstract class PocketsizeExport : DefaultTask() {
    @get:Input abstract val executable: Property<String>

    @get:Input abstract val model: Property<String>

    @get:Input abstract val formats: Property<String>

    @get:Input abstract val quantize: Property<String>

    // The local model folder's files (empty for zoo:/timm:/hf: specs), so the
    // task reruns when the model on disk changes, not only when its path does.
    @get:InputFiles
    @get:PathSensitive(PathSensitivity.RELATIVE)
    abstract val modelFiles: ConfigurableFileCollection

    @get:OutputDirectory abstract val outputDir: DirectoryProperty

    @get:Inject abstract val execOps: ExecOperations

    @TaskAction
    fun export() {
        // pocketsize refuses a non-empty --out and renames its output into place
        // at the end, so export into a fresh staging folder, then copy.
        val staging = File(temporaryDir, "export")
        staging.deleteRecursively()
        execOps.exec {
            commandLine(
                executable.get(), "export", model.get(),
                "--to", formats.get(),
                "--quantize", quantize.get(),
                "--out", staging.path
            )
        }
        val out = outputDir.get().asFile
        out.deleteRecursively()
        staging.copyRecursively(File(out, "pocketsize"), overwrite = true)
    }
}

val pocketsizeModel = providers.gradleProperty("pocketsize.model").getOrElse("").trim()

if (pocketsizeModel.isNotEmpty()) {
    // A local folder is resolved against android-demo/; a spec such as
    // zoo:dinov2-small or timm:NAME is passed through unchanged.
    val modelArg = if (":" in pocketsizeModel) pocketsizeModel else rootProject.file(pocketsizeModel).path
    androidComponents {
        onVariants { variant ->
            // One task per variant (pocketsizeExportDebug, pocketsizeExportRelease):
            // addGeneratedSourceDirectory wires the task's outputDir to a
            // variant-specific folder, as in android/gradle-recipes
            // addGeneratedSourceFolder. It runs when that variant merges assets.
            val taskName = "pocketsizeExport" + variant.name.replaceFirstChar { it.uppercase() }
            val export = tasks.register<PocketsizeExport>(taskName) {
                group = "pocketsize"
                description = "Runs `pocketsize export` and bundles the artifacts as assets/pocketsize/."
                executable.set(providers.gradleProperty("pocketsize.executable").orElse("pocketsize"))
                model.set(modelArg)
                if (":" !in pocketsizeModel) modelFiles.from(modelArg)
                formats.set(providers.gradleProperty("pocketsize.formats").orElse("executorch,onnx"))
                quantize.set(providers.gradleProperty("pocketsize.quantize").orElse("none"))
            }
            variant.sources.assets?.addGeneratedSourceDirectory(export, PocketsizeExport::outputDir)
        }
    }
}
