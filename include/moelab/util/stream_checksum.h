// A 64-bit checksum of a byte stream fed in pieces of any size: what a checkpoint file carries so
// that a truncated, bit-flipped or otherwise damaged file is refused before LibTorch parses it.
// Not cryptographic: it catches accidents (disk, copy, kill), not forgery.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moelab {

class StreamChecksum {
 public:
  void update(const void* data, size_t size);
  // The checksum of everything fed so far (the stream may continue afterwards).
  uint64_t digest() const;

 private:
  void take_word(uint64_t word);
  uint64_t lanes_[4] = {1, 2, 3, 4};
  uint64_t words_ = 0;
  unsigned char pending_[8] = {};  // bytes of an unfinished 8-byte word
  size_t pending_size_ = 0;
  uint64_t total_bytes_ = 0;
};

}  // namespace moelab
