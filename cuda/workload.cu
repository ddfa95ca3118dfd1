// workload: holds N MiB of VRAM and keeps the GPU busy for S seconds, reporting progress once a second.
//
//   workload --mib N --seconds S [--device D]
//
// stdout, one line each (flushed at once, so a parent reading a pipe sees them live):
//   progress 0.0 allocated=1024MiB elapsed=0.0s
//   progress 35.0 allocated=1024MiB elapsed=3.5s
//   ...
//   done
// SIGTERM (or SIGINT) stops the loop at the next kernel boundary (tens of milliseconds), frees the memory
// and exits 143 (130 for SIGINT). Exit 1: bad arguments or CUDA error; 2: no device; 3: out of memory.
// D is CUDA's index, i.e. relative to CUDA_VISIBLE_DEVICES.

#include <cuda_runtime.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace {

volatile std::sig_atomic_t stopSignal = 0;

void onSignal(int sig) { stopSignal = sig; }

double nowSeconds() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Dependent FMAs in registers keep the SMs busy; the store keeps the compiler from removing the loop.
__global__ void busy(float *out, size_t n, int iterations) {
  size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  float a = 1.0f + static_cast<float>(threadIdx.x) * 1e-6f;
  float b = 0.999999f;
  for (int i = 0; i < iterations; ++i) {
    a = fmaf(a, b, 1e-7f);
    b = fmaf(b, a, -1e-7f);
  }
  if (n > 0) out[idx % n] = a + b;
}

void usage() {
  std::fprintf(stderr, "usage: workload --mib N --seconds S [--device D]\n");
}

bool parseNumber(const char *s, double min, double max, double *out) {
  char *end = nullptr;
  double v = std::strtod(s, &end);
  if (end == s || *end != '\0' || !(v >= min && v <= max)) return false;
  *out = v;
  return true;
}

int fail(const char *what, cudaError_t err) {
  std::fprintf(stderr, "workload: %s: %s\n", what, cudaGetErrorString(err));
  if (err == cudaErrorMemoryAllocation) return 3;
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) return 2;
  return 1;
}

}  // namespace

int main(int argc, char **argv) {
  double mib = -1;
  double seconds = -1;
  double device = 0;
  for (int i = 1; i < argc; ++i) {
    const char *arg = argv[i];
    const char *value = i + 1 < argc ? argv[i + 1] : nullptr;
    bool ok = value != nullptr;
    if (std::strcmp(arg, "--mib") == 0) ok = ok && parseNumber(value, 0, 16.0 * 1024 * 1024, &mib);
    else if (std::strcmp(arg, "--seconds") == 0) ok = ok && parseNumber(value, 0, 7 * 24 * 3600, &seconds);
    else if (std::strcmp(arg, "--device") == 0) ok = ok && parseNumber(value, 0, 1024, &device);
    else if (std::strcmp(arg, "--help") == 0 || std::strcmp(arg, "-h") == 0) {
      usage();
      return 0;
    } else ok = false;
    if (!ok) {
      std::fprintf(stderr, "workload: bad argument %s%s%s\n", arg, value ? " " : "", value ? value : "");
      usage();
      return 1;
    }
    ++i;
  }
  if (mib < 0 || seconds < 0) {
    usage();
    return 1;
  }

  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = onSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  cudaError_t err = cudaSetDevice(static_cast<int>(device));
  if (err != cudaSuccess) return fail("cudaSetDevice", err);

  const size_t bytes = static_cast<size_t>(mib) * 1024 * 1024;
  float *buffer = nullptr;
  if (bytes > 0) {
    err = cudaMalloc(&buffer, bytes);
    if (err != cudaSuccess) return fail("cudaMalloc", err);
    // Touch every page so the memory is really resident, not just reserved.
    err = cudaMemset(buffer, 0, bytes);
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
      cudaFree(buffer);
      return fail("cudaMemset", err);
    }
  }
  const size_t elements = bytes / sizeof(float);
  const unsigned long long allocatedMiB = static_cast<unsigned long long>(mib);

  int smCount = 1;
  cudaDeviceGetAttribute(&smCount, cudaDevAttrMultiProcessorCount, static_cast<int>(device));
  const int threads = 256;
  const int blocks = smCount * 4;

  // Calibrate the kernel length to about 20 ms so a signal is seen quickly at any GPU speed.
  int iterations = 1 << 14;
  const double start = nowSeconds();
  double lastReport = -1;
  bool reportedFull = false;
  int code = 0;
  for (;;) {
    const double elapsed = nowSeconds() - start;
    if (stopSignal != 0) {
      code = 128 + stopSignal;
      break;
    }
    if (elapsed - lastReport >= 1.0 || lastReport < 0) {
      double pct = seconds > 0 ? elapsed / seconds * 100.0 : 100.0;
      if (pct >= 100.0) {
        pct = 100.0;
        reportedFull = true;
      }
      std::printf("progress %.1f allocated=%lluMiB elapsed=%.1fs\n", pct, allocatedMiB, elapsed);
      std::fflush(stdout);
      lastReport = lastReport < 0 ? 0 : lastReport + 1.0;
    }
    if (elapsed >= seconds) break;

    const double t0 = nowSeconds();
    busy<<<blocks, threads>>>(buffer, elements, iterations);
    err = cudaGetLastError();
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
      if (buffer) cudaFree(buffer);
      return fail("kernel", err);
    }
    const double took = nowSeconds() - t0;
    if (took < 0.010 && iterations < (1 << 28)) iterations *= 2;
    else if (took > 0.040 && iterations > 64) iterations /= 2;
  }

  if (buffer) cudaFree(buffer);
  if (code != 0) {
    std::fprintf(stderr, "workload: stopped by signal %d after %.1fs, memory freed\n", code - 128,
                 nowSeconds() - start);
    return code;
  }
  if (!reportedFull)
    std::printf("progress 100.0 allocated=%lluMiB elapsed=%.1fs\n", allocatedMiB, nowSeconds() - start);
  std::printf("done\n");
  std::fflush(stdout);
  return 0;
}
