// Top-level build file. AGP 9 compiles Kotlin itself (built-in Kotlin), so no
// org.jetbrains.kotlin.android plugin is applied anywhere.
plugins {
    alias(libs.plugins.android.application) apply false
}
