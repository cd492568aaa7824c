"""Evaluation metrics of SPEC §4: FID/KID, intra-cluster LPIPS, correspondence error; offline-safe."""

from fsg_ray.metrics.correspondence import correspondence_error
from fsg_ray.metrics.features import FeatureExtractor, InceptionWeightsError, build_extractor, generated_images
from fsg_ray.metrics.fid import compute_fid_kid, fid_from_features, kid_from_features
from fsg_ray.metrics.lpips_cluster import LpipsModel, LpipsWeightsError, assign_clusters, build_lpips, intra_cluster_lpips

__all__ = [
    "FeatureExtractor",
    "InceptionWeightsError",
    "LpipsModel",
    "LpipsWeightsError",
    "assign_clusters",
    "build_extractor",
    "build_lpips",
    "compute_fid_kid",
    "correspondence_error",
    "fid_from_features",
    "generated_images",
    "intra_cluster_lpips",
    "kid_from_features",
]
