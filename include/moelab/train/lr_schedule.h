// Learning-rate schedule: linear warm-up to the peak, then cosine or linear decay to
// min_lr_ratio * peak at the last step, inverse-square-root decay (peak * sqrt(warmup / step)), or
// constant.
#pragma once
#include <cstdint>
#include <string>

namespace moelab {

struct LrSchedule {
  double peak = 1e-3;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  std::string decay = "cosine";  // cosine | linear | inverse_sqrt | none
  double min_ratio = 0.1;

  double at(int64_t step) const;  // step counts from 1
};

}  // namespace moelab
