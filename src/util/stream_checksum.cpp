#include "moelab/util/stream_checksum.h"

#include <cstring>

#include "moelab/util/mix64.h"

namespace moelab {

// Four independent lanes, word i into lane i % 4, so the mixing of consecutive words overlaps in
// the CPU instead of waiting on one chain.
void StreamChecksum::take_word(uint64_t word) {
  auto& lane = lanes_[words_ % 4];
  lane = mix64(lane ^ word);
  ++words_;
}

void StreamChecksum::update(const void* data, size_t size) {
  // An empty tensor hands over a null pointer; memcpy must not see it, even for zero bytes.
  if (size == 0) return;
  const auto* bytes = static_cast<const unsigned char*>(data);
  total_bytes_ += size;
  while (size > 0 && pending_size_ > 0) {
    pending_[pending_size_++] = *bytes++;
    --size;
    if (pending_size_ == 8) {
      uint64_t word;
      std::memcpy(&word, pending_, 8);
      take_word(word);
      pending_size_ = 0;
    }
  }
  for (; size >= 8; size -= 8, bytes += 8) {
    uint64_t word;
    std::memcpy(&word, bytes, 8);
    take_word(word);
  }
  std::memcpy(pending_ + pending_size_, bytes, size);
  pending_size_ += size;
}

uint64_t StreamChecksum::digest() const {
  StreamChecksum copy = *this;
  // The tail, zero-padded, and the length: "ab" and "ab\0" differ.
  uint64_t tail = 0;
  std::memcpy(&tail, copy.pending_, copy.pending_size_);
  copy.take_word(tail);
  uint64_t out = mix64(total_bytes_);
  for (const auto lane : copy.lanes_) out = mix64(out ^ lane);
  return out;
}

}  // namespace moelab
