// A supervised task (tagging, QA) as the training loop drives it: batches of examples grouped by
// length, shuffled per epoch with train.seed.
#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "moelab/data/packed_batches.h"
#include "moelab/train/supervised_task.h"
#include "moelab/train/training_task.h"
#include "moelab/util/error.h"

namespace moelab {

namespace {

class SupervisedTrainingTask : public TrainingTask {
 public:
  SupervisedTrainingTask(std::unique_ptr<SupervisedTask> task, const Config& config)
      : task_(std::move(task)),
        seed_(static_cast<uint64_t>(config.get_int("train.seed"))),
        batch_size_(config.get_int("train.batch")) {
    const auto& lengths = task_->train_lengths();
    batches_per_epoch_ = (static_cast<int64_t>(lengths.size()) + batch_size_ - 1) / batch_size_;
    tokens_per_epoch_ = std::accumulate(lengths.begin(), lengths.end(), int64_t{0});
  }

  torch::nn::Module& model() override { return task_->model(); }
  std::vector<NamedMoELayer> moe_layers() const override {
    const auto& moe = task_->encoder()->moe;
    if (!moe) return {};
    return {{"encoder.moe", moe}};
  }
  void mask_gradients(uint64_t seed, int64_t step) override { task_->encoder()->mask_gradients(seed, step); }
  std::vector<LayerCost> costs() const override { return task_->costs(); }
  std::string vocabulary_text() const override { return task_->vocabulary().words.to_text(); }

  int64_t batches_per_epoch() const override { return batches_per_epoch_; }

  int64_t micro_batches_at(int64_t step, int64_t configured) override {
    return micro_batches_for(static_cast<int64_t>(batch_at(step).size()), configured);
  }

  StepForward forward(const StepSlice& slice) override {
    const auto examples = micro_batch_of(batch_at(slice.step), slice);
    auto out = task_->forward(examples);
    StepForward result;
    result.loss = out.loss;
    result.aux_loss = out.encoded.aux_loss;
    result.loss_terms = std::move(out.encoded.loss_terms);
    result.routing = std::move(out.encoded.routing);
    result.tokens = out.tokens;
    return result;
  }

  int64_t tokens_through(int64_t step) const override {
    const auto& lengths = task_->train_lengths();
    const int64_t full = step / batches_per_epoch_, rest = step % batches_per_epoch_;
    int64_t tokens = full * tokens_per_epoch_;
    if (rest > 0) {
      const auto partial = epoch_batches(full);
      for (int64_t b = 0; b < rest; ++b)
        for (const auto e : partial[static_cast<size_t>(b)]) tokens += lengths[static_cast<size_t>(e)];
    }
    return tokens;
  }

  SplitEvaluation evaluate(const std::string& split, std::vector<RoutingStatsAccumulator>* routing) override {
    auto figures = task_->evaluate(split, routing);
    const auto data = task_->data_summary();
    const int64_t tokens = data.contains(split) ? data[split].value("tokens", int64_t{0}) : 0;
    return {std::move(figures), tokens};
  }
  bool has_split(const std::string& split) const override { return task_->has_split(split); }
  std::string headline(const nlohmann::json& figures) const override { return task_->headline(figures); }
  bool reports_perplexity() const override { return false; }
  std::string selection_figure() const override { return task_->selection_figure(); }

  std::string describe_data() const override {
    return task_->describe_data() +
           fmt::format("; {} batches of up to {} per epoch", batches_per_epoch_, batch_size_);
  }
  nlohmann::json summary_fields() const override { return {{"data", task_->data_summary()}}; }

 private:
  const std::vector<int64_t>& batch_at(int64_t step) {
    const int64_t epoch = (step - 1) / batches_per_epoch_;
    if (epoch != batches_epoch_) {
      batches_ = epoch_batches(epoch);
      batches_epoch_ = epoch;
    }
    return batches_[static_cast<size_t>((step - 1) % batches_per_epoch_)];
  }

  std::vector<std::vector<int64_t>> epoch_batches(int64_t epoch) const {
    // Kept non-negative whatever the seed: a negative shuffle seed means "no shuffle".
    const uint64_t shuffle_seed = (seed_ * 1000003 + static_cast<uint64_t>(epoch)) & 0x3fffffffffffffffULL;
    return length_grouped_batches(task_->train_lengths(), batch_size_, static_cast<int64_t>(shuffle_seed));
  }

  std::unique_ptr<SupervisedTask> task_;
  uint64_t seed_;
  int64_t batch_size_, batches_per_epoch_ = 0, tokens_per_epoch_ = 0;
  int64_t batches_epoch_ = -1;
  std::vector<std::vector<int64_t>> batches_;
};

}  // namespace

std::unique_ptr<TrainingTask> make_supervised_training_task(const TaskSetup& setup) {
  const auto& name = setup.config.get_string("model.task");
  auto task = name == "tagging" ? make_tagging_task(setup.config, setup.saved_vocabulary)
                                : make_qa_task(setup.config, setup.saved_vocabulary);
  return std::make_unique<SupervisedTrainingTask>(std::move(task), setup.config);
}

std::vector<int64_t> micro_batch_of(const std::vector<int64_t>& examples, const StepSlice& slice) {
  if (slice.micro_batches < 1 || slice.micro_batch < 0 || slice.micro_batch >= slice.micro_batches)
    fail("training step {}: micro-batch {} of {} does not exist", slice.step, slice.micro_batch, slice.micro_batches);
  const auto size = static_cast<int64_t>(examples.size());
  const int64_t base = size / slice.micro_batches, extra = size % slice.micro_batches;
  const int64_t begin = slice.micro_batch * base + std::min(slice.micro_batch, extra);
  const int64_t length = base + (slice.micro_batch < extra ? 1 : 0);
  if (length == 0)
    fail("training step {}: micro-batch {} of {} has no example", slice.step, slice.micro_batch, slice.micro_batches);
  return {examples.begin() + begin, examples.begin() + begin + length};
}

int64_t micro_batches_for(int64_t examples, int64_t configured) {
  return std::max<int64_t>(1, std::min(examples, configured));
}

std::unique_ptr<TrainingTask> make_training_task(const TaskSetup& setup) {
  if (setup.config.get_string("model.task") == "lm") return make_language_model_task(setup);
  if (setup.config.get_string("model.task") == "translation") return make_translation_task(setup);
  return make_supervised_training_task(setup);
}

}  // namespace moelab
