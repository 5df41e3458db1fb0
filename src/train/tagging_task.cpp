// Named-entity tagging on CoNLL files (see supervised_task.h).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <set>

#include "moelab/data/conll.h"
#include "moelab/data/packed_batches.h"
#include "moelab/data/singleton_unk.h"
#include "moelab/device/device.h"
#include "moelab/models/model_from_config.h"
#include "moelab/models/sequence_tagger.h"
#include "moelab/train/supervised_task.h"
#include "moelab/train/tagging_metrics.h"
#include "moelab/util/error.h"

namespace moelab {

namespace {

struct TaggingSplit {
  ConllData data;
  std::vector<std::vector<int64_t>> word_ids;  // per sentence
  std::vector<int64_t> lengths;
  int64_t unknown_words = 0;                   // tokens mapped to <unk>
  int64_t tokens = 0;
};

class TaggingTask : public SupervisedTask {
 public:
  TaggingTask(const Config& config, const std::optional<std::string>& saved_vocabulary)
      : lowercase_(config.get_bool("data.lowercase")), batch_(config.get_int("train.batch")) {
    splits_["train"].data = read_conll_file(config.get_string("data.train"));
    splits_["valid"].data = read_conll_file(config.get_string("data.valid"));
    if (!config.get_string("data.test").empty()) splits_["test"].data = read_conll_file(config.get_string("data.test"));

    std::set<std::string> tag_set;
    std::unordered_map<std::string, int64_t> train_counts;
    std::unordered_set<std::string> other_words;
    for (const auto& [name, split] : splits_)
      for (const auto& sentence : split.data.sentences)
        for (size_t i = 0; i < sentence.tokens.size(); ++i) {
          const auto word = lookup_form(sentence.tokens[i], lowercase_);
          if (name == "train") {
            ++train_counts[word];
            tag_set.insert(sentence.tags[i]);
          } else {
            other_words.insert(word);
          }
        }
    tags_.assign(tag_set.begin(), tag_set.end());
    if (tags_.size() < 2)
      fail("{}: the training data uses {} tag(s); tagging needs at least 2", config.get_string("data.train"), tags_.size());
    for (size_t i = 0; i < tags_.size(); ++i) tag_ids_[tags_[i]] = static_cast<int64_t>(i);

    vocabulary_ = task_vocabulary_for_run(config, saved_vocabulary, train_counts, other_words, {});
    singleton_unk_ = SingletonUnk(vocabulary_.words, train_counts, config.get_float("data.singleton_unk"));
    for (auto& [name, split] : splits_) {
      for (const auto& sentence : split.data.sentences) {
        std::vector<int64_t> ids;
        for (const auto& token : sentence.tokens) {
          ids.push_back(vocabulary_.words.id(lookup_form(token, lowercase_)));
          split.unknown_words += ids.back() == vocabulary_.words.unk_id();
        }
        split.tokens += static_cast<int64_t>(ids.size());
        split.lengths.push_back(static_cast<int64_t>(ids.size()));
        split.word_ids.push_back(std::move(ids));
      }
    }
    for (const auto& sentence : splits_["train"].data.sentences) {
      std::vector<int64_t> ids;
      for (const auto& tag : sentence.tags) ids.push_back(tag_ids_.at(tag));
      train_tags_.push_back(std::move(ids));
    }
    auto options = encoder_options(config, vocabulary_.words.size());
    if (options.chars()) options.chars()->mean_word_bytes(mean_word_bytes(splits_.at("train").data));
    model_ = SequenceTagger(options, tags_, config.get_string("model.decoder"));
    // A CRF cannot learn a gold sequence its constraints forbid (the loss would stay at the penalty).
    const auto& train_sentences = splits_.at("train").data.sentences;
    for (size_t i = 0; i < train_tags_.size(); ++i)
      if (!model_->can_produce(train_tags_[i]))
        fail("{}: training sentence {} has a tag sequence that is not IOB2 ({}), which model.decoder = crf forbids",
             config.get_string("data.train"), i + 1, fmt::join(train_sentences[i].tags, " "));
    if (vocabulary_.embeddings.defined()) model_->encoder->set_embeddings(vocabulary_.embeddings);
  }

  torch::nn::Module& model() override { return *model_; }
  BiLstmMoEEncoder& encoder() override { return model_->encoder; }
  const std::vector<int64_t>& train_lengths() const override { return splits_.at("train").lengths; }
  bool has_split(const std::string& split) const override { return splits_.count(split) > 0; }

  TaskForward forward(const std::vector<int64_t>& examples) override {
    const auto& train = splits_.at("train");
    std::vector<const std::vector<int64_t>*> words, tags;
    for (const auto e : examples) {
      words.push_back(&train.word_ids[static_cast<size_t>(e)]);
      tags.push_back(&train_tags_[static_cast<size_t>(e)]);
    }
    const auto packed = pack_sequences(words);
    const auto device = module_device(*model_);
    TaskForward out;
    // batch_sizes stay on the CPU, where LibTorch's packed LSTMs read them.
    out.encoded = model_(singleton_unk_.apply(packed.values.to(device)), packed.batch_sizes, spelling(train, examples, packed, device));
    out.loss = model_->loss(out.encoded, packed.batch_sizes, pack_sequences(tags).values.to(device));
    out.tokens = packed.tokens();
    return out;
  }

  nlohmann::json evaluate(const std::string& name, std::vector<RoutingStatsAccumulator>* routing) override {
    const auto& split = splits_.at(name);
    torch::NoGradGuard no_grad;
    model_->eval();
    EntityScorer scorer;
    for (const auto& batch : length_grouped_batches(split.lengths, batch_, -1)) {
      std::vector<const std::vector<int64_t>*> words;
      for (const auto e : batch) words.push_back(&split.word_ids[static_cast<size_t>(e)]);
      const auto packed = pack_sequences(words);
      const auto device = module_device(*model_);
      const auto encoded = model_(packed.values.to(device), packed.batch_sizes, spelling(split, batch, packed, device));
      if (routing) add_routing(*routing, encoded.routing);
      const auto best = model_->predict(encoded, packed.batch_sizes).to(torch::kCPU).contiguous();
      const auto* predicted = best.data_ptr<int64_t>();
      for (size_t b = 0; b < batch.size(); ++b) {
        const auto& sentence = split.data.sentences[static_cast<size_t>(batch[b])];
        std::vector<std::string> tags;
        for (const auto row : packed.rows[b]) tags.push_back(tags_[static_cast<size_t>(predicted[row])]);
        scorer.add(sentence.tags, tags);
      }
    }
    model_->train();
    nlohmann::json figures = {{name + "_token_acc", 100 * scorer.token_accuracy()},
                              {name + "_entity_precision", 100 * scorer.overall().precision()},
                              {name + "_entity_recall", 100 * scorer.overall().recall()},
                              {name + "_entity_f1", 100 * scorer.overall().f1()},
                              {name + "_entities", scorer.overall().gold}};
    nlohmann::json by_type = nlohmann::json::object();
    for (const auto& [type, counts] : scorer.by_type())
      by_type[type] = {{"precision", 100 * counts.precision()},
                       {"recall", 100 * counts.recall()},
                       {"f1", 100 * counts.f1()},
                       {"gold", counts.gold}};
    figures[name + "_entity_by_type"] = by_type;
    return figures;
  }

  std::vector<LayerCost> costs() const override { return model_->costs(); }

  std::string headline(const nlohmann::json& f) const override {
    return fmt::format("token acc {:.2f}%, entity F1 {:.2f}", f.value("valid_token_acc", 0.0),
                       f.value("valid_entity_f1", 0.0));
  }

  std::string selection_figure() const override { return "valid_entity_f1"; }

  std::string describe_data() const override {
    const auto& train = splits_.at("train");
    std::string line = fmt::format(
        "tagging: {} train sentences ({} tokens, {} scheme{}), {} valid{}; {} tags; vocabulary {}",
        train.data.sentences.size(), train.tokens, train.data.scheme_found,
        train.data.entities_converted > 0 ? fmt::format(", {} tags converted to IOB2", train.data.entities_converted) : "",
        splits_.at("valid").data.sentences.size(),
        has_split("test") ? fmt::format(", {} test", splits_.at("test").data.sentences.size()) : "", tags_.size(),
        vocabulary_.words.size());
    if (vocabulary_.embeddings.defined())
      line += fmt::format("; GloVe vectors for {} of {} words", vocabulary_.embeddings_found, vocabulary_.words.size());
    return line;
  }

  nlohmann::json data_summary() const override {
    nlohmann::json data = {{"tags", tags_},
                           {"vocab_size", vocabulary_.words.size()},
                           {"singleton_words", singleton_unk_.singletons()}};
    if (vocabulary_.embeddings.defined()) data["embeddings_found"] = vocabulary_.embeddings_found;
    for (const auto& [name, split] : splits_)
      data[name] = {{"sentences", split.data.sentences.size()},
                    {"tokens", split.tokens},
                    {"unknown_tokens", split.unknown_words},
                    {"scheme_found", split.data.scheme_found},
                    {"converted_to_iob2", split.data.entities_converted}};
    return data;
  }

 private:
  // [N, L] byte ids of the batch's tokens as written, in packed order; undefined without
  // character features.
  torch::Tensor spelling(const TaggingSplit& split, const std::vector<int64_t>& examples, const PackedBatch& packed,
                         const torch::Device& device) const {
    if (!model_->encoder->chars) return {};
    std::vector<const std::string*> words(static_cast<size_t>(packed.tokens()));
    for (size_t b = 0; b < examples.size(); ++b) {
      const auto& tokens = split.data.sentences[static_cast<size_t>(examples[b])].tokens;
      for (size_t t = 0; t < tokens.size(); ++t) words[static_cast<size_t>(packed.rows[b][t])] = &tokens[t];
    }
    return word_bytes(words).to(device);
  }

  static double mean_word_bytes(const ConllData& data) {
    double bytes = 0, words = 0;
    for (const auto& sentence : data.sentences)
      for (const auto& token : sentence.tokens) {
        bytes += static_cast<double>(std::min<size_t>(token.size(), kMaxWordBytes));
        words += 1;
      }
    return words > 0 ? bytes / words : 0.0;
  }

  bool lowercase_;
  int64_t batch_;
  std::map<std::string, TaggingSplit> splits_;
  std::vector<std::string> tags_;
  std::unordered_map<std::string, int64_t> tag_ids_;
  std::vector<std::vector<int64_t>> train_tags_;
  SingletonUnk singleton_unk_;
  SequenceTagger model_{nullptr};
};

}  // namespace

std::unique_ptr<SupervisedTask> make_tagging_task(const Config& config, const std::optional<std::string>& saved_vocabulary) {
  return std::make_unique<TaggingTask>(config, saved_vocabulary);
}

}  // namespace moelab
