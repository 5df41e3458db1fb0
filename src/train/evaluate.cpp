#include "moelab/train/evaluate.h"

#include <cmath>

#include "moelab/data/lm_batches.h"
#include "moelab/device/device.h"
#include "moelab/train/gradient_sync.h"

namespace moelab {

EvalResult evaluate_language_model(LanguageModelImpl& model, const torch::Tensor& stream, int64_t batch,
                                   int64_t bptt, int64_t max_tokens, std::vector<RoutingStatsAccumulator>* routing,
                                   Communicator* communicator) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  torch::Tensor tokens = stream.to(module_device(model));
  if (max_tokens > 0 && stream.size(0) > max_tokens) tokens = stream.narrow(0, 0, max_tokens);
  // Short splits get fewer columns rather than an error: evaluation should work on any split that
  // holds at least two tokens.
  const int64_t columns = std::max<int64_t>(1, std::min(batch, tokens.size(0) / 2));
  LmBatches batches(tokens, columns, bptt);
  const int world = communicator ? communicator->world_size() : 1;
  const bool sharded = world > 1 && columns >= world;
  const auto [first_column, my_columns] = sharded ? even_share(columns, communicator->rank(), world)
                                                  : std::pair<int64_t, int64_t>{0, columns};
  LstmState state;
  double total_loss = 0;
  int64_t total_tokens = 0;
  for (int64_t i = 0; i < batches.num_windows(); ++i) {
    const auto window = batches.window(i).columns(first_column, my_columns);
    auto out = model.forward(window.input, state);
    const int64_t n = window.target.numel();
    total_loss += model.loss(out.features, window.target).item<double>() * static_cast<double>(n);
    total_tokens += n;
    state = out.state;
    if (routing) {
      if (sharded)
        for (auto& layer : out.routing) layer = sum_routing_stats(*communicator, layer);
      add_routing(*routing, out.routing);
    }
  }
  if (sharded) {
    const auto sums = sum_over_ranks(*communicator, {total_loss, static_cast<double>(total_tokens)});
    total_loss = sums[0];
    total_tokens = std::llround(sums[1]);
  }
  if (was_training) model.train();
  EvalResult result;
  result.tokens = total_tokens;
  result.loss = total_tokens > 0 ? total_loss / static_cast<double>(total_tokens) : 0.0;
  result.perplexity = std::exp(result.loss);
  return result;
}

}  // namespace moelab
