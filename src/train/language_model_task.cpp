// Word-level language modelling on a text corpus (model.task = "lm"): contiguous windows of a
// batchified token stream (train.bptt tokens for the LSTM, model.context for the Transformer); the
// LSTM's state is carried from window to window within an epoch, the Transformer's windows stand alone.
#include <fmt/format.h>

#include "moelab/data/lm_batches.h"
#include "moelab/data/text_corpus.h"
#include "moelab/models/model_from_config.h"
#include "moelab/train/evaluate.h"
#include "moelab/train/run_dir.h"
#include "moelab/train/training_task.h"
#include "moelab/util/error.h"

namespace moelab {

namespace {

TextCorpus read_corpus(const Config& config, const std::string& directory,
                       const std::optional<std::string>& saved_vocabulary) {
  VocabularyOptions vocab_options;
  vocab_options.min_count = config.get_int("data.min_count");
  vocab_options.max_size = config.get_int("data.max_vocab");
  TextCorpus corpus = load_text_corpus(directory, vocab_options);
  if (saved_vocabulary) {
    // The vocabulary is part of the run: reuse it so ids mean the same thing after a resume.
    corpus.vocabulary = Vocabulary::from_text(*saved_vocabulary);
    corpus.train = load_split(directory + "/train.txt", corpus.vocabulary);
    corpus.valid = load_split(directory + "/valid.txt", corpus.vocabulary);
    corpus.test = load_split(directory + "/test.txt", corpus.vocabulary);
  }
  return corpus;
}

class LanguageModelTask : public TrainingTask {
 public:
  explicit LanguageModelTask(const TaskSetup& setup)
      : config_(setup.config),
        run_(setup.run),
        corpus_dir_(corpus_directory(config_)),
        corpus_(read_corpus(config_, corpus_dir_, setup.saved_vocabulary)),
        batch_(config_.get_int("train.batch")),
        window_(language_model_window(config_)),
        // The whole token stream goes to the device once; windows are then views, not copies per step.
        batches_(corpus_.train.to(setup.device), batch_, window_) {
    const int world = run_.world_size();
    if (batch_ % world != 0)
      fail("train.batch = {} columns do not split evenly over {} ranks; use a multiple of {}", batch_, world, world);
    local_columns_ = batch_ / world;
    first_column_ = run_.rank() * local_columns_;
    // Equal micro-batches keep the step's mean loss the whole batch's.
    const int64_t micro_batches = config_.get_int("train.accumulate");
    if (local_columns_ % micro_batches != 0)
      fail("train.accumulate = {} does not divide the {} batch columns of a rank (train.batch / ranks)",
           micro_batches, local_columns_);
    // Built on the CPU (the initial weights of a seed do not depend on the device); the loop moves it.
    model_ = make_language_model(config_, corpus_.vocabulary.size());
  }

  torch::nn::Module& model() override { return *model_; }
  std::vector<NamedMoELayer> moe_layers() const override { return model_->moe_layers(); }
  void mask_gradients(uint64_t seed, int64_t step) override { model_->mask_gradients(seed, step); }
  std::vector<LayerCost> costs() const override { return model_->costs(); }
  std::string vocabulary_text() const override { return corpus_.vocabulary.to_text(); }

  int64_t batches_per_epoch() const override { return batches_.num_windows(); }

  StepForward forward(const StepSlice& slice) override {
    const int64_t window_index = (slice.step - 1) % batches_.num_windows();
    // A new epoch starts from a zero state.
    if (window_index == 0 && slice.micro_batch == 0) state_ = LstmState();
    TORCH_CHECK(local_columns_ % slice.micro_batches == 0, "micro-batches must split the columns evenly");
    // Micro-batch m takes its share of this rank's columns and of the carried state; the step's new
    // state is put together once every micro-batch has run.
    const int64_t columns = local_columns_ / slice.micro_batches, first = slice.micro_batch * columns;
    const auto window = batches_.window(window_index).columns(first_column_ + first, columns);
    auto out = model_->forward(window.input, slice.micro_batches == 1 ? state_ : state_.columns(first, columns));
    if (slice.micro_batches == 1) {
      state_ = out.state.detached();
    } else {
      next_state_.push_back(out.state.detached());
      if (slice.micro_batch + 1 == slice.micro_batches) {
        state_ = LstmState::concatenated(next_state_);
        next_state_.clear();
      }
    }
    StepForward result;
    result.loss = model_->loss(out.features, window.target);
    result.aux_loss = out.aux_loss;
    result.loss_terms = std::move(out.loss_terms);
    result.routing = std::move(out.routing);
    result.tokens = window.target.numel() * run_.world_size();
    return result;
  }

  int64_t tokens_through(int64_t step) const override { return batches_.tokens_through(step); }

  SplitEvaluation evaluate(const std::string& split, std::vector<RoutingStatsAccumulator>* routing) override {
    const auto& stream = split == "test" ? corpus_.test : corpus_.valid;
    const auto result = evaluate_language_model(*model_, stream, config_.get_int("train.eval_batch"), window_,
                                                config_.get_int("train.eval_max_tokens"), routing,
                                                run_.communicator().get());
    return {{{split + "_loss", result.loss}, {split + "_ppl", result.perplexity}}, result.tokens};
  }
  bool has_split(const std::string& split) const override { return split == "valid" || split == "test"; }
  std::string headline(const nlohmann::json& figures) const override {
    for (const auto& [key, value] : figures.items())
      if (key.size() > 4 && key.compare(key.size() - 4, 4, "_ppl") == 0) return fmt::format("ppl {:.2f}", value.get<double>());
    return "";
  }
  bool reports_perplexity() const override { return true; }

  std::string describe_data() const override {
    return fmt::format("corpus {}: {} train tokens, vocabulary {}; {} windows of {}x{} per epoch", corpus_dir_,
                       corpus_.train.size(0), corpus_.vocabulary.size(), batches_.num_windows(), window_, batch_);
  }
  nlohmann::json summary_fields() const override {
    return {{"tokens_per_step", batch_ * window_}, {"vocab_size", corpus_.vocabulary.size()}, {"corpus", corpus_dir_}};
  }

  LstmState* carried_state() override { return &state_; }
  const CheckpointShards* checkpoint_shards() const override { return &shards_; }
  void prepare_checkpoint_shards() override {
    shards_.communicator = run_.communicator();
    shards_.parallel = config_.get_string("moe.parallel");
    shards_.num_columns = batch_;
    shards_.first_column = first_column_;
    shards_.local_columns = local_columns_;
    const auto layers = model_->moe_layers();
    if (layers.empty()) return;
    // Every MoE layer of a model has the same experts and the same split over ranks.
    const auto& moe = layers.front().layer;
    shards_.num_experts = moe->options.num_experts();
    shards_.local_experts = shards_.num_experts;
    if (moe->exchange) {
      shards_.first_expert = moe->exchange->first_expert();
      shards_.local_experts = moe->exchange->local_experts();
      // Frozen ones too (train.freeze): they are this rank's share like the others.
      shards_.expert_parameters.clear();
      for (const auto& layer : layers)
        for (const auto& p : layer.layer->experts->per_expert_parameters()) shards_.expert_parameters.push_back(p);
    }
  }

 private:
  const Config& config_;
  const DistributedRun& run_;
  std::string corpus_dir_;
  TextCorpus corpus_;
  int64_t batch_, window_;
  LmBatches batches_;
  int64_t local_columns_ = 0, first_column_ = 0;
  LanguageModelPtr model_;
  LstmState state_;
  std::vector<LstmState> next_state_;  // the micro-batches' new states while a step runs
  CheckpointShards shards_;
};

}  // namespace

std::unique_ptr<TrainingTask> make_language_model_task(const TaskSetup& setup) {
  return std::make_unique<LanguageModelTask>(setup);
}

}  // namespace moelab
