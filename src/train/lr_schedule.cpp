#include "moelab/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace moelab {

double LrSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step <= warmup_steps)
    return peak * static_cast<double>(step) / static_cast<double>(warmup_steps);
  if (decay == "none") return peak;
  // Vaswani et al. 2017: the warm-up peak decays as 1/sqrt(step), whatever the run's length.
  if (decay == "inverse_sqrt")
    return peak * std::sqrt(static_cast<double>(std::max<int64_t>(warmup_steps, 1)) / static_cast<double>(step));
  if (total_steps <= warmup_steps) return peak;
  const double progress = std::clamp(static_cast<double>(step - warmup_steps) /
                                         static_cast<double>(total_steps - warmup_steps), 0.0, 1.0);
  const double shape = decay == "linear" ? 1.0 - progress : 0.5 * (1.0 + std::cos(M_PI * progress));
  return peak * (min_ratio + (1.0 - min_ratio) * shape);
}

}  // namespace moelab
