#include "moelab/dispatch/grouped_path.h"

#include <atomic>
#include <map>
#include <mutex>
#include <tuple>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "moelab/util/error.h"

namespace moelab {

namespace {

std::atomic<GroupedPath> g_default_path{GroupedPath::kAuto};

struct Choices {
  std::mutex mutex;
  std::map<GroupedShape, GroupedChoice> by_shape;
};

Choices& choices() {
  static Choices c;
  return c;
}

}  // namespace

constexpr GroupedPath kAllPaths[] = {GroupedPath::kAuto,     GroupedPath::kLoop,   GroupedPath::kParallel,
                                     GroupedPath::kPaddedBmm, GroupedPath::kOneDnn, GroupedPath::kOneDnnTransposed,
                                     GroupedPath::kStreaming, GroupedPath::kGroupedMm, GroupedPath::kReference};

GroupedPath parse_grouped_path(const std::string& name) {
  for (auto path : kAllPaths)
    if (grouped_path_name(path) == name) return path;
  fail("unknown grouped path '{}' (known: {})", name, fmt::join(grouped_path_names(), ", "));
}

std::string grouped_path_name(GroupedPath path) {
  switch (path) {
    case GroupedPath::kAuto: return "auto";
    case GroupedPath::kLoop: return "loop";
    case GroupedPath::kParallel: return "parallel";
    case GroupedPath::kPaddedBmm: return "bmm";
    case GroupedPath::kOneDnn: return "onednn";
    case GroupedPath::kOneDnnTransposed: return "onednn_transposed";
    case GroupedPath::kStreaming: return "streaming";
    case GroupedPath::kGroupedMm: return "grouped_mm";
    case GroupedPath::kReference: return "reference";
  }
  return "?";
}

const std::vector<std::string>& grouped_path_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> all;
    for (auto path : kAllPaths) all.push_back(grouped_path_name(path));
    return all;
  }();
  return names;
}

void set_grouped_path(GroupedPath path) { g_default_path.store(path); }
GroupedPath grouped_path() { return g_default_path.load(); }

std::string grouped_product_name(GroupedProduct product) {
  switch (product) {
    case GroupedProduct::kForward: return "forward";
    case GroupedProduct::kInputGrad: return "input_grad";
    case GroupedProduct::kWeightGrad: return "weight_grad";
  }
  return "?";
}

bool GroupedShape::operator<(const GroupedShape& other) const {
  return std::tie(device_type, scalar_type, experts, in_width, out_width, rows_bucket, product) <
         std::tie(other.device_type, other.scalar_type, other.experts, other.in_width, other.out_width,
                  other.rows_bucket, other.product);
}

std::string GroupedShape::key() const {
  auto key = fmt::format("{} {} E={} I={} O={} rows={}",
                         c10::DeviceTypeName(static_cast<c10::DeviceType>(device_type), true),
                         c10::toString(static_cast<c10::ScalarType>(scalar_type)), experts, in_width, out_width,
                         rows_bucket);
  if (product != GroupedProduct::kForward) key += " product=" + grouped_product_name(product);
  return key;
}

GroupedShape grouped_shape_of(const torch::Tensor& x, const torch::Tensor& weight,
                              const std::vector<int64_t>& rows_per_expert, GroupedProduct product) {
  GroupedShape shape;
  shape.product = product;
  shape.device_type = static_cast<int>(x.device().type());
  shape.scalar_type = static_cast<int>(x.scalar_type());
  shape.experts = weight.size(0);
  shape.in_width = weight.size(1);
  shape.out_width = weight.size(2);
  const int64_t experts = std::max<int64_t>(1, shape.experts);
  int64_t average = x.size(0) / experts, bucket = 1;
  while (bucket * 2 <= average) bucket *= 2;
  shape.rows_bucket = average == 0 ? 0 : bucket;
  return shape;
}

GroupedPath chosen_grouped_path(const GroupedShape& shape) {
  auto& c = choices();
  std::lock_guard<std::mutex> lock(c.mutex);
  const auto it = c.by_shape.find(shape);
  return it == c.by_shape.end() ? GroupedPath::kAuto : it->second.path;
}

void remember_grouped_path(const GroupedChoice& choice) {
  auto& c = choices();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.by_shape[choice.shape] = choice;
}

std::vector<GroupedChoice> grouped_path_choices() {
  auto& c = choices();
  std::lock_guard<std::mutex> lock(c.mutex);
  std::vector<GroupedChoice> out;
  for (const auto& entry : c.by_shape) out.push_back(entry.second);
  return out;
}

void forget_grouped_paths() {
  auto& c = choices();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.by_shape.clear();
}

}  // namespace moelab
