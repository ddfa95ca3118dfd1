// probe: lists the CUDA devices this process can see, as one line of JSON on stdout.
//
//   {"devices":[{"index":0,"uuid":"GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx","name":"NVIDIA H100 80GB HBM3",
//     "freeMiB":80530,"totalMiB":81559,"computeCapability":"9.0","pciBusId":"0000:01:00.0"}],
//    "driverVersion":13000,"runtimeVersion":13000}
//
// The uuid is formatted like nvidia-smi and DCGM's `UUID` label, so the host can join its own series with
// the exporter's. Indexes are CUDA's, i.e. relative to CUDA_VISIBLE_DEVICES.
//
// Exit status: 0 with at least one device; 2 with no usable device (no GPU, no driver, driver too old),
// printing {"devices":[],"error":{"code":"...","message":"..."},"driverVersion":N,"runtimeVersion":N};
// 1 when a device was found but could not be queried.

#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <string>

namespace {

std::string jsonString(const char *s) {
  std::string out = "\"";
  for (const unsigned char *p = reinterpret_cast<const unsigned char *>(s); *p; ++p) {
    switch (*p) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (*p < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", *p);
          out += buf;
        } else {
          out += static_cast<char>(*p);
        }
    }
  }
  return out + "\"";
}

std::string formatUuid(const cudaUUID_t &uuid) {
  const unsigned char *b = reinterpret_cast<const unsigned char *>(uuid.bytes);
  char buf[48];
  std::snprintf(buf, sizeof buf,
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
                b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return buf;
}

const char *errorCode(cudaError_t err) {
  switch (err) {
    case cudaErrorNoDevice: return "no_device";
    case cudaErrorInsufficientDriver: return "insufficient_driver";
    default: return "cuda_error";
  }
}

}  // namespace

int main() {
  int driverVersion = 0;
  int runtimeVersion = 0;
  cudaDriverGetVersion(&driverVersion);
  cudaRuntimeGetVersion(&runtimeVersion);

  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    const char *code = err == cudaSuccess ? "no_device" : errorCode(err);
    const char *message = err == cudaSuccess ? "no CUDA device visible" : cudaGetErrorString(err);
    std::printf("{\"devices\":[],\"error\":{\"code\":%s,\"message\":%s},\"driverVersion\":%d,\"runtimeVersion\":%d}\n",
                jsonString(code).c_str(), jsonString(message).c_str(), driverVersion, runtimeVersion);
    return 2;
  }

  std::string out = "{\"devices\":[";
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    std::memset(&prop, 0, sizeof prop);
    err = cudaGetDeviceProperties(&prop, i);
    if (err != cudaSuccess) {
      std::fprintf(stderr, "probe: cudaGetDeviceProperties(%d): %s\n", i, cudaGetErrorString(err));
      return 1;
    }
    size_t freeBytes = 0;
    size_t totalBytes = 0;
    err = cudaSetDevice(i);
    if (err == cudaSuccess) err = cudaMemGetInfo(&freeBytes, &totalBytes);
    if (err != cudaSuccess) {
      std::fprintf(stderr, "probe: cudaMemGetInfo(%d): %s\n", i, cudaGetErrorString(err));
      return 1;
    }
    char pciBusId[32];
    std::snprintf(pciBusId, sizeof pciBusId, "%08x:%02x:%02x.0", prop.pciDomainID, prop.pciBusID, prop.pciDeviceID);
    char entry[512];
    std::snprintf(entry, sizeof entry,
                  "%s{\"index\":%d,\"uuid\":%s,\"name\":%s,\"freeMiB\":%llu,\"totalMiB\":%llu,"
                  "\"computeCapability\":\"%d.%d\",\"pciBusId\":\"%s\"}",
                  i == 0 ? "" : ",", i, jsonString(formatUuid(prop.uuid).c_str()).c_str(),
                  jsonString(prop.name).c_str(), static_cast<unsigned long long>(freeBytes >> 20),
                  static_cast<unsigned long long>(totalBytes >> 20), prop.major, prop.minor, pciBusId);
    out += entry;
    // Release the context this query created so the probe leaves no footprint behind.
    cudaDeviceReset();
  }
  std::printf("%s],\"driverVersion\":%d,\"runtimeVersion\":%d}\n", out.c_str(), driverVersion, runtimeVersion);
  return 0;
}
