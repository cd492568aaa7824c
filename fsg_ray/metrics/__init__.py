"""Evaluation metrics of SPEC §4: FID/KID, intra-cluster LPIPS, correspondence; offline-safe."""

from fsg_ray.metrics.correspondence import correspondence_error, correspondence_ratio
from fsg_ray.metrics.features import FeatureExtractor, InceptionWeightsError, build_extractor, generated_images
from fsg_ray.metrics.fid import compute_fid_kid, fid_from_features, fid_undefined, kid_from_features
from fsg_ray.metrics.lpips_cluster import (
    LpipsModel,
    LpipsWeightsError,
    assign_clusters,
    build_lpips,
    build_stlpips,
    intra_cluster_lpips,
    lpips_unavailable,
)

__all__ = [
    "FeatureExtractor",
    "InceptionWeightsError",
    "LpipsModel",
    "LpipsWeightsError",
    "assign_clusters",
    "build_extractor",
    "build_lpips",
    "build_stlpips",
    "compute_fid_kid",
    "correspondence_error",
    "correspondence_ratio",
    "fid_from_features",
    "fid_undefined",
    "generated_images",
    "intra_cluster_lpips",
    "kid_from_features",
    "lpips_unavailable",
]
