// The device mesh: world ranks arranged as dp x tp x pp, with tp varying fastest (tensor-parallel
// peers are neighbours, so they share a node's fast links), then dp, then pp. Each rank gets one
// sub-communicator per axis; the coordinate maths is pure and static so it can be tested alone.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/communicator.h"

namespace meshtrain {

/// Number of ranks along each axis: data, tensor and pipeline parallel.
struct MeshShape {
  int dp = 1, tp = 1, pp = 1;
  int size() const { return dp * tp * pp; }
  bool operator==(const MeshShape&) const = default;
};

/// A rank's position on each axis.
struct MeshCoord {
  int dp = 0, tp = 0, pp = 0;
  bool operator==(const MeshCoord&) const = default;
};

enum class MeshAxis { dp, tp, pp };

/// "dp", "tp" or "pp".
const char* mesh_axis_name(MeshAxis axis);

class Mesh {
 public:
  /// Splits world into the three axis communicators; collective over world, which must outlive the
  /// Mesh. Throws if shape does not multiply to world.size().
  Mesh(Communicator& world, MeshShape shape);

  const MeshShape& shape() const { return shape_; }
  const MeshCoord& coord() const { return coord_; }
  Communicator& world() const { return world_; }
  /// Ranks that differ only in their dp coordinate, ordered by it (gradient all-reduce).
  Communicator& dp() const { return *dp_; }
  /// Ranks that differ only in their tp coordinate, ordered by it (tensor-parallel all-reduce).
  Communicator& tp() const { return *tp_; }
  /// Ranks that differ only in their pp coordinate, ordered by it (pipeline send/recv).
  Communicator& pp() const { return *pp_; }
  Communicator& axis(MeshAxis a) const;
  int dp_rank() const { return coord_.dp; }
  int tp_rank() const { return coord_.tp; }
  int pp_rank() const { return coord_.pp; }

  // Pure coordinate maths (no communication).
  /// Throws "[mesh] parallel.dp x parallel.tp x parallel.pp = ... must equal the number of ranks (n)"
  /// unless every axis is >= 1 and they multiply to world_size.
  static void check_shape(MeshShape shape, int world_size);
  /// world_rank = (pp * dp_size + dp) * tp_size + tp.
  static int rank_of(MeshShape shape, MeshCoord coord);
  static MeshCoord coord_of(MeshShape shape, int world_rank);
  /// The split color of world_rank's group along axis: equal exactly for ranks that share the other
  /// two coordinates. The key is the coordinate along the axis.
  static int split_color(MeshShape shape, MeshAxis axis, int world_rank);
  static int split_key(MeshShape shape, MeshAxis axis, int world_rank);
  /// World ranks of world_rank's group along axis, in axis order.
  static std::vector<int> group_ranks(MeshShape shape, MeshAxis axis, int world_rank);
  /// Size of the axis in shape.
  static int axis_size(MeshShape shape, MeshAxis axis);
  /// Coordinate of coord along axis.
  static int axis_coord(MeshCoord coord, MeshAxis axis);

 private:
  std::unique_ptr<Communicator> split_axis(MeshAxis axis);

  Communicator& world_;
  MeshShape shape_;
  MeshCoord coord_;
  std::unique_ptr<Communicator> dp_, tp_, pp_;
};

}  // namespace meshtrain
