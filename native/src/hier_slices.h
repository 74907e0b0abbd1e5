// The fan-out table of the hierarchical dispatch, cut by slice (HIER_PROTOCOL
// dispatch 4-5): which rows of which forwarder's staging a destination fans
// out, and in which step of the sliced transfer they land. Host-only C++ (no
// CUDA) so tests can build it alone: tests/hier_slices_native_test.ts
// compiles it and checks it against lib/sim/slices.ts's schedule.
//
// A fan stream is one (forwarder, source) pair of the destination's node: the
// `rows` rows the source sends that forwarder, staged there from row `first`
// on. Step j of the transfer moves rows [j*C, min((j+1)*C, rows)) of every
// stream (lib/sim/slices.ts), so slice j of a stream is staged at rows
// [first + j*C, first + j*C + n) of its forwarder, n = min(C, rows - j*C),
// when rows > j*C, and is absent otherwise.
//
// The table holds one piece per (slice, stream) with rows, slice-major:
// pieces of slice j, in the order the streams were given, then slice j+1's.
// prefix[i] counts the rows of the pieces before piece i (prefix[n] = all
// rows), so the rows of slice j are exactly the global rows [row_lo, row_hi)
// of pieces [ent_lo, ent_hi). Every staged row of every stream is in exactly
// one piece, so fanning out all slices (one launch per slice, or one launch
// over [0, prefix[n])) writes every received row once.
#pragma once

#include <algorithm>
#include <vector>

namespace weft {

struct FanStream {
  int lf;     // the forwarder's local rank
  int src;    // the source (global rank)
  int first;  // its first row in the forwarder's staging
  int rows;   // rows it sends that forwarder (0: none)
};

struct FanSlice {
  int ent_lo = 0, ent_hi = 0;  // pieces [ent_lo, ent_hi) of the table
  int row_lo = 0, row_hi = 0;  // their rows: [prefix[ent_lo], prefix[ent_hi])
  unsigned need = 0u;          // local ranks of the forwarders holding them
};

struct FanTable {
  std::vector<int> ent;          // [n][4]: forwarder local rank, source, first staged row, rows
  std::vector<int> prefix{0};    // [n+1]
  std::vector<FanSlice> slices;  // [J]: J = slices of the longest stream (0 when all are empty)
  int pieces() const { return static_cast<int>(prefix.size()) - 1; }
  int rows() const { return prefix.back(); }
  // Every piece at once (the fan-out after the last slice).
  FanSlice all() const {
    FanSlice s;
    s.ent_hi = pieces();
    s.row_hi = rows();
    return s;
  }
};

// C >= 1 rows a slice. Streams of 0 rows (or fewer) add no piece.
inline void fan_slice_table(const std::vector<FanStream>& streams, int C, FanTable* out) {
  out->ent.clear();
  out->prefix.assign(1, 0);
  out->slices.clear();
  if (C < 1) C = 1;
  long long most = 0;
  for (const FanStream& s : streams) most = std::max<long long>(most, s.rows);
  for (long long lo = 0; lo < most; lo += C) {
    FanSlice sl;
    sl.ent_lo = out->pieces();
    sl.row_lo = out->rows();
    for (const FanStream& s : streams) {
      if (s.rows <= lo) continue;
      const int n = static_cast<int>(std::min<long long>(C, s.rows - lo));
      out->ent.insert(out->ent.end(), {s.lf, s.src, s.first + static_cast<int>(lo), n});
      out->prefix.push_back(out->rows() + n);
      sl.need |= 1u << (s.lf & 31);
    }
    sl.ent_hi = out->pieces();
    sl.row_hi = out->rows();
    out->slices.push_back(sl);
  }
}

}  // namespace weft
