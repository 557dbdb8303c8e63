// pocketsize ExecuTorch benchmark runner: speaks the runner protocol in
// benchmarks/devices/base.py. Built by benchmarks/runner/build.py with g++ (or
// aarch64-linux-gnu-g++) against the headers and libraries of the executorch wheel.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

// threadpool.h is not shipped in the wheel; this is the one member we need.
namespace executorch::extension::threadpool {
class ThreadPool { public: bool _unsafe_reset_threadpool(uint32_t num_threads); };
ThreadPool* get_threadpool();
}

using executorch::extension::module::Module;
using executorch::runtime::EValue;
using executorch::runtime::Result;
using Clock = std::chrono::steady_clock;

static double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}
static int die(const char* what, int err) {
  std::fprintf(stderr, "et_runner: %s failed (error 0x%x)\n", what, err);
  return 10;
}
static void copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (in) { std::ofstream out(to, std::ios::binary); out << in.rdbuf(); }
}

// ---- causal-LM mode (--llm-prompt P): the KV-cached decoders of export.llm,
// forward(input_ids int64 (1,T), cache_position int64 (T,)) -> logits (1,T,V).
// One generation = prefill P fixed tokens + G greedy decode steps; times.txt
// gets "p <ms>" per prefill and "t <ms>" per decode step (see llm_runner.py,
// the Python twin this mirrors).
struct Llm { long prompt = 0, decode = 0, vocab = 0, eval_len = 0; };

static Result<std::vector<float>> lm_step(Module& mod, std::vector<int64_t>& ids, std::vector<int64_t>& pos) {
  auto ti = executorch::extension::make_tensor_ptr({1, (executorch::aten::SizesType)ids.size()}, ids.data(),
                                                   executorch::aten::ScalarType::Long);
  auto tp = executorch::extension::make_tensor_ptr({(executorch::aten::SizesType)pos.size()}, pos.data(),
                                                   executorch::aten::ScalarType::Long);
  auto r = mod.forward({EValue(ti), EValue(tp)});
  if (!r.ok()) return r.error();
  auto t = r->at(0).toTensor();
  const float* d = t.const_data_ptr<float>();
  return std::vector<float>(d, d + t.numel());
}

static long argmax_last(const std::vector<float>& logits, long vocab) {
  const float* row = logits.data() + logits.size() - vocab;
  long best = 0;
  for (long i = 1; i < vocab; ++i) if (row[i] > row[best]) best = i;
  return best;
}

// prefill + decode; returns false on a runtime error. tf null: untimed.
static bool lm_generation(Module& mod, const Llm& lm, FILE* tf, double* prefill_ms) {
  std::vector<int64_t> ids(lm.prompt), pos(lm.prompt);
  for (long i = 0; i < lm.prompt; ++i) { ids[i] = (int64_t)((i * 2654435761ull) % (unsigned long long)lm.vocab); pos[i] = i; }
  auto t0 = Clock::now();
  auto r = lm_step(mod, ids, pos);
  if (!r.ok()) return false;
  double pre = ms_since(t0);
  if (prefill_ms) *prefill_ms = pre;
  if (tf) std::fprintf(tf, "p %.6f\n", pre);
  long tok = argmax_last(*r, lm.vocab);
  for (long g = 0; g < lm.decode; ++g) {
    std::vector<int64_t> one{tok}, at{lm.prompt + g};
    t0 = Clock::now();
    auto s = lm_step(mod, one, at);
    if (!s.ok()) return false;
    tok = argmax_last(*s, lm.vocab);
    if (tf) { std::fprintf(tf, "t %.6f\n", ms_since(t0)); std::fflush(tf); }
  }
  return true;
}

// each chunk prefilled from position 0; writes (nll_sum, predicted tokens) as float32 per chunk
static bool lm_eval(Module& mod, const Llm& lm, const std::string& input, long count, const std::string& out) {
  FILE* fin = std::fopen(input.c_str(), "rb");
  FILE* fout = std::fopen(out.c_str(), "wb");
  if (!fin || !fout) return false;
  std::vector<int64_t> ids(lm.eval_len), pos(lm.eval_len);
  for (long i = 0; i < lm.eval_len; ++i) pos[i] = i;
  for (long n = 0; n < count; ++n) {
    if (std::fread(ids.data(), sizeof(int64_t), ids.size(), fin) != ids.size()) return false;
    auto r = lm_step(mod, ids, pos);
    if (!r.ok()) return false;
    double nll = 0;
    for (long i = 0; i + 1 < lm.eval_len; ++i) {
      const float* row = r->data() + i * lm.vocab;
      double m = row[0], z = 0;
      for (long v = 1; v < lm.vocab; ++v) m = row[v] > m ? row[v] : m;
      for (long v = 0; v < lm.vocab; ++v) z += std::exp((double)row[v] - m);
      nll += m + std::log(z) - (double)row[ids[i + 1]];
    }
    float rec[2] = {(float)nll, (float)(lm.eval_len - 1)};
    std::fwrite(rec, sizeof(float), 2, fout);
  }
  std::fclose(fin);
  std::fclose(fout);
  return true;
}

static int run_llm(Module& mod, const Llm& lm, const std::string& out_dir, long warmup, long iterations, long min_ms,
                   long threads, double load_ms, const std::string& eval_input, long eval_count) {
  double first_ms = 0;
  if (!lm_generation(mod, lm, nullptr, &first_ms)) return die("first generation", 0);
  for (long i = 0; i < warmup; ++i)
    if (!lm_generation(mod, lm, nullptr, nullptr)) return die("warmup generation", 0);
  FILE* tf = std::fopen((out_dir + "/times.txt").c_str(), "w");
  if (!tf) return die("open times.txt", 0);
  auto bench0 = Clock::now();
  long gens = 0;
  for (; gens < iterations || ms_since(bench0) < (double)min_ms; ++gens)
    if (!lm_generation(mod, lm, tf, nullptr)) return die("timed generation", 0);
  std::fclose(tf);
  if (!eval_input.empty() && eval_count > 0 && !lm_eval(mod, lm, eval_input, eval_count, out_dir + "/eval_outputs.bin"))
    return die("perplexity evaluation", 0);
  copy_file("/proc/self/status", out_dir + "/status.txt");
  copy_file("/proc/self/smaps_rollup", out_dir + "/smaps_rollup.txt");
  FILE* rf = std::fopen((out_dir + "/report.json.tmp").c_str(), "w");
  if (!rf) return die("open report.json", 0);
  std::fprintf(rf, "{\"runtime\": \"executorch\", \"runtime_version\": \"%s\", \"load_ms\": %.6f, "
               "\"first_inference_ms\": %.6f, \"output_shape\": [1, %ld, %ld], \"eval_count\": %ld, "
               "\"threads\": %ld, \"llm\": {\"prompt_tokens\": %ld, \"decode_tokens\": %ld, \"generations\": %ld}, "
               "\"notes\": [\"native C++ runner (no Python)\", \"first_inference_ms is the cold prefill of the prompt\"]}\n",
               ET_RUNNER_VERSION, load_ms, first_ms, lm.prompt, lm.vocab, eval_count, threads, lm.prompt, lm.decode, gens);
  std::fclose(rf);
  std::rename((out_dir + "/report.json.tmp").c_str(), (out_dir + "/report.json").c_str());
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) { std::fprintf(stderr, "usage: et_runner MODEL --out-dir DIR [...]\n"); return 2; }
  std::string model = argv[1], out_dir = ".", eval_input;
  long warmup = 5, iterations = 20, min_ms = 0, threads = 1, eval_count = 0;
  Llm lm;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--out-dir") out_dir = v;
    else if (k == "--warmup") warmup = std::atol(v.c_str());
    else if (k == "--iterations") iterations = std::atol(v.c_str());
    else if (k == "--min-duration-ms") min_ms = std::atol(v.c_str());
    else if (k == "--threads") threads = std::atol(v.c_str());
    else if (k == "--eval-input") eval_input = v;
    else if (k == "--eval-count") eval_count = std::atol(v.c_str());
    else if (k == "--llm-prompt") lm.prompt = std::atol(v.c_str());
    else if (k == "--llm-decode") lm.decode = std::atol(v.c_str());
    else if (k == "--llm-vocab") lm.vocab = std::atol(v.c_str());
    else if (k == "--llm-eval-len") lm.eval_len = std::atol(v.c_str());
    else { std::fprintf(stderr, "et_runner: unknown flag %s\n", k.c_str()); return 2; }
  }
  if (threads > 0) executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(threads);

  auto t0 = Clock::now();
  Module mod(model, Module::LoadMode::Mmap);
  auto err = mod.load_forward();
  if (err != executorch::runtime::Error::Ok) return die("load", (int)err);
  double load_ms = ms_since(t0);
  if (lm.prompt > 0) {
    if (lm.vocab <= 0) { std::fprintf(stderr, "et_runner: --llm-prompt needs --llm-vocab\n"); return 2; }
    return run_llm(mod, lm, out_dir, warmup, iterations, min_ms, threads, load_ms, eval_input, eval_count);
  }

  auto meta = mod.method_meta("forward");
  if (!meta.ok()) return die("method_meta", (int)meta.error());
  auto in_meta = meta->input_tensor_meta(0);
  if (!in_meta.ok()) return die("input_tensor_meta", (int)in_meta.error());
  std::vector<executorch::aten::SizesType> sizes(in_meta->sizes().begin(), in_meta->sizes().end());
  size_t numel = 1;
  for (auto s : sizes) numel *= (size_t)s;
  std::vector<float> buf(numel);
  for (size_t i = 0; i < numel; ++i) buf[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
  auto input = executorch::extension::make_tensor_ptr(sizes, buf.data());

  t0 = Clock::now();
  auto res = mod.forward(input);
  if (!res.ok()) return die("first inference", (int)res.error());
  double first_ms = ms_since(t0);
  auto out0 = res->at(0).toTensor();
  std::vector<long> out_shape(out0.sizes().begin(), out0.sizes().end());

  for (long i = 0; i < warmup; ++i)
    if (!mod.forward(input).ok()) return die("warmup inference", 0);
  FILE* tf = std::fopen((out_dir + "/times.txt").c_str(), "w");
  if (!tf) return die("open times.txt", 0);
  auto bench0 = Clock::now();
  for (long i = 0; i < iterations || ms_since(bench0) < (double)min_ms; ++i) {
    t0 = Clock::now();
    if (!mod.forward(input).ok()) return die("timed inference", 0);
    std::fprintf(tf, "t %.6f\n", ms_since(t0));
    std::fflush(tf);  // a crash later must not lose what was measured
  }
  std::fclose(tf);

  if (!eval_input.empty() && eval_count > 0) {
    FILE* fin = std::fopen(eval_input.c_str(), "rb");
    FILE* fout = std::fopen((out_dir + "/eval_outputs.bin").c_str(), "wb");
    if (!fin || !fout) return die("open eval files", 0);
    for (long n = 0; n < eval_count; ++n) {
      if (std::fread(buf.data(), sizeof(float), numel, fin) != numel) return die("read eval input", 0);
      auto r = mod.forward(input);
      if (!r.ok()) return die("eval inference", (int)r.error());
      auto t = r->at(0).toTensor();
      std::fwrite(t.const_data_ptr<float>(), sizeof(float), t.numel(), fout);
    }
    std::fclose(fin);
    std::fclose(fout);
  }

  copy_file("/proc/self/status", out_dir + "/status.txt");
  copy_file("/proc/self/smaps_rollup", out_dir + "/smaps_rollup.txt");
  std::string shape;
  for (size_t i = 0; i < out_shape.size(); ++i) shape += (i ? "," : "") + std::to_string(out_shape[i]);
  FILE* rf = std::fopen((out_dir + "/report.json.tmp").c_str(), "w");
  if (!rf) return die("open report.json", 0);
  std::fprintf(rf, "{\"runtime\": \"executorch\", \"runtime_version\": \"%s\", \"load_ms\": %.6f, "
               "\"first_inference_ms\": %.6f, \"output_shape\": [%s], \"eval_count\": %ld, \"threads\": %ld}\n",
               ET_RUNNER_VERSION, load_ms, first_ms, shape.c_str(), eval_count, threads);
  std::fclose(rf);
  std::rename((out_dir + "/report.json.tmp").c_str(), (out_dir + "/report.json").c_str());
  return 0;
}
