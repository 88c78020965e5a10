// tch 0.24 can switch autocast on but not choose its dtype (libtorch's CUDA default is fp16).
// This one function selects bf16 for CUDA autocast.
#include <ATen/autocast_mode.h>

extern "C" void dmue_set_cuda_autocast_bf16() {
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
}
