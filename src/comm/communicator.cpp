#include "moelab/comm/communicator.h"

#include <atomic>
#include <mutex>

#include "moelab/util/error.h"

namespace moelab {

namespace {

// Rank 0 of 1: every collective is an identity, so code written for W ranks runs unchanged.
class SingleProcessCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string backend() const override { return "single"; }
  torch::Device device() const override { return torch::kCPU; }
  void all_reduce_sum(torch::Tensor&) override {}
  std::vector<torch::Tensor> all_gather(const torch::Tensor& tensor) override { return {tensor}; }
  torch::Tensor all_to_all(const torch::Tensor& input, const std::vector<int64_t>& send_rows,
                           const std::vector<int64_t>& recv_rows) override {
    TORCH_CHECK(send_rows.size() == 1 && recv_rows.size() == 1 && send_rows[0] == recv_rows[0],
                "single-process all_to_all sends to itself only");
    return input;
  }
  void broadcast(torch::Tensor&, int) override {}
  void barrier() override {}
};

struct World {
  std::mutex mutex;
  std::shared_ptr<Communicator> communicator;
  std::atomic<bool> failed{false};
};

World& the_world() {
  static World w;
  return w;
}

}  // namespace

std::shared_ptr<Communicator> single_process_communicator() { return std::make_shared<SingleProcessCommunicator>(); }

std::shared_ptr<Communicator> world() {
  auto& w = the_world();
  std::lock_guard<std::mutex> lock(w.mutex);
  if (!w.communicator) w.communicator = single_process_communicator();
  return w.communicator;
}

void set_world(std::shared_ptr<Communicator> communicator) {
  auto& w = the_world();
  std::lock_guard<std::mutex> lock(w.mutex);
  w.communicator = std::move(communicator);
}

bool world_failed() { return the_world().failed.load(); }
void mark_world_failed() { the_world().failed.store(true); }

std::vector<double> sum_over_ranks(Communicator& communicator, const std::vector<double>& values) {
  if (communicator.world_size() == 1 || values.empty()) return values;
  auto tensor = torch::tensor(values, torch::kFloat64).to(communicator.device());
  communicator.all_reduce_sum(tensor);
  tensor = tensor.cpu();
  return {tensor.data_ptr<double>(), tensor.data_ptr<double>() + tensor.numel()};
}

torch::Tensor all_gather_cat(Communicator& communicator, const torch::Tensor& tensor, int64_t dim) {
  if (communicator.world_size() == 1) return tensor;
  return torch::cat(communicator.all_gather(tensor.contiguous()), dim);
}

std::pair<int64_t, int64_t> even_share(int64_t total, int rank, int world) {
  const int64_t base = total / world, extra = total % world;
  const int64_t first = rank * base + std::min<int64_t>(rank, extra);
  return {first, base + (rank < extra ? 1 : 0)};
}

}  // namespace moelab
