// Mesh: rank <-> coordinate maths and the three axis communicators made by split().
#include "parallel/mesh.h"

namespace meshtrain {

const char* mesh_axis_name(MeshAxis axis) {
  switch (axis) {
    case MeshAxis::dp:
      return "dp";
    case MeshAxis::tp:
      return "tp";
    case MeshAxis::pp:
      return "pp";
  }
  return "?";
}

void Mesh::check_shape(MeshShape s, int world_size) {
  MT_CHECK(s.dp >= 1 && s.tp >= 1 && s.pp >= 1,
           "[mesh] parallel.dp, parallel.tp and parallel.pp must each be at least 1 (got {}, {}, {})", s.dp, s.tp,
           s.pp);
  MT_CHECK(int64_t{s.dp} * s.tp * s.pp == world_size,
           "[mesh] parallel.dp x parallel.tp x parallel.pp = {} x {} x {} = {} must equal the number of ranks ({})",
           s.dp, s.tp, s.pp, int64_t{s.dp} * s.tp * s.pp, world_size);
}

int Mesh::rank_of(MeshShape s, MeshCoord c) {
  MT_CHECK(c.dp >= 0 && c.dp < s.dp && c.tp >= 0 && c.tp < s.tp && c.pp >= 0 && c.pp < s.pp,
           "[mesh] coordinate (dp {}, tp {}, pp {}) outside a {} x {} x {} mesh", c.dp, c.tp, c.pp, s.dp, s.tp, s.pp);
  return (c.pp * s.dp + c.dp) * s.tp + c.tp;
}

MeshCoord Mesh::coord_of(MeshShape s, int world_rank) {
  MT_CHECK(world_rank >= 0 && world_rank < s.size(), "[mesh] rank {} outside a {} x {} x {} mesh of {} ranks",
           world_rank, s.dp, s.tp, s.pp, s.size());
  MeshCoord c;
  c.tp = world_rank % s.tp;
  c.dp = (world_rank / s.tp) % s.dp;
  c.pp = world_rank / (s.tp * s.dp);
  return c;
}

int Mesh::axis_size(MeshShape s, MeshAxis axis) {
  return axis == MeshAxis::dp ? s.dp : axis == MeshAxis::tp ? s.tp : s.pp;
}

int Mesh::axis_coord(MeshCoord c, MeshAxis axis) {
  return axis == MeshAxis::dp ? c.dp : axis == MeshAxis::tp ? c.tp : c.pp;
}

int Mesh::split_color(MeshShape s, MeshAxis axis, int world_rank) {
  MeshCoord c = coord_of(s, world_rank);
  // Number the groups by the two coordinates that stay fixed along the axis.
  switch (axis) {
    case MeshAxis::dp:
      return c.pp * s.tp + c.tp;
    case MeshAxis::tp:
      return c.pp * s.dp + c.dp;
    case MeshAxis::pp:
      return c.dp * s.tp + c.tp;
  }
  return -1;
}

int Mesh::split_key(MeshShape s, MeshAxis axis, int world_rank) { return axis_coord(coord_of(s, world_rank), axis); }

std::vector<int> Mesh::group_ranks(MeshShape s, MeshAxis axis, int world_rank) {
  MeshCoord c = coord_of(s, world_rank);
  std::vector<int> ranks;
  for (int i = 0; i < axis_size(s, axis); ++i) {
    MeshCoord peer = c;
    (axis == MeshAxis::dp ? peer.dp : axis == MeshAxis::tp ? peer.tp : peer.pp) = i;
    ranks.push_back(rank_of(s, peer));
  }
  return ranks;
}

Mesh::Mesh(Communicator& world, MeshShape shape) : world_(world), shape_(shape) {
  check_shape(shape, world.size());
  coord_ = coord_of(shape, world.rank());
  dp_ = split_axis(MeshAxis::dp);
  tp_ = split_axis(MeshAxis::tp);
  pp_ = split_axis(MeshAxis::pp);
}

std::unique_ptr<Communicator> Mesh::split_axis(MeshAxis axis) {
  int me = world_.rank();
  auto comm = world_.split(split_color(shape_, axis, me), split_key(shape_, axis, me));
  // A communicator whose split disagrees with the maths would silently pair the wrong ranks.
  const char* name = mesh_axis_name(axis);
  MT_CHECK(comm && comm->size() == axis_size(shape_, axis) && comm->rank() == split_key(shape_, axis, me),
           "[mesh] {} rank {}: splitting the {} axis gave rank {} of {}, expected rank {} of {}", world_.name(), me,
           name, comm ? comm->rank() : -1, comm ? comm->size() : 0, split_key(shape_, axis, me),
           axis_size(shape_, axis));
  comm->set_name(world_.name() + "/" + name);
  return comm;
}

Communicator& Mesh::axis(MeshAxis a) const { return a == MeshAxis::dp ? *dp_ : a == MeshAxis::tp ? *tp_ : *pp_; }

}  // namespace meshtrain
