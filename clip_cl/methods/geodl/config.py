"""`GeoDLConfig`: geodesic distillation (Simon, Koniusz & Harandi, CVPR 2021) as a CLIP baseline."""

from dataclasses import dataclass, field

from ...losses import GEODL_FORMS
from ..base.config import CLIPCLConfig

__all__ = ["GeoDLConfig", "GEODL_TERMS"]

GEODL_TERMS = ("auto", "image", "text", "both")


@dataclass
class GeoDLConfig(CLIPCLConfig):
    r"""
    Configuration of GeoDL: cross-entropy plus `geodl_weight * L_GeoDL`, where `L_GeoDL` compares the student's and
    the teacher's L2-normalised features along the geodesic flow between their PCA subspaces (the geodesic flow kernel
    of Gong et al. 2012). As in the official CL-CLIP code the term applies to the batch's image features when the
    image tower trains and to the class-prompt features when the text tower trains, each with weight 0.5. All other
    fields are those of [`CLIPCLConfig`].

    Parameters that control the distillation:
        geodl_weight (`float`, defaults to 0.5):
            Weight of each GeoDL term (CL-CLIP's `--alpha`).
        geodl_terms (`str`, defaults to `"auto"`):
            Which features are distilled: `"auto"` follows the variant (image features for WM/IO, class-prompt features
            for WM/TO, as CL-CLIP), or `"image"`, `"text"`, `"both"`.
        geodl_form (`str`, defaults to `"distance"`):
            `"distance"`: `mean_i (s_i - t_i)^T G (s_i - t_i)` (CL-CLIP's code);
            `"cosine"`: `mean_i 1 - sim_G(s_i, t_i)` (the GeoDL paper).

    Parameters that control the subspaces:
        geodl_subspace_dim (`int`, *optional*):
            PCA dimension `d` of both subspaces; `None` is the official rule `min(n, D) - 2` (98 for a batch of 100
            with 512-d features, 2 for a batch of 4), always clipped to `[1, min(n - 1, D)]`.
        geodl_center (`bool`, defaults to `True`):
            Centre the features on the batch mean before PCA.
    """

    _method = "geodl"

    geodl_weight: float = field(default=0.5, metadata={"help": "Weight of each GeoDL term (CL-CLIP: 0.5)."})
    geodl_terms: str = field(default="auto", metadata={
        "help": "Distilled features: 'auto' (image for WM/IO, class prompts for WM/TO, as CL-CLIP), 'image', 'text' "
                "or 'both'."})
    geodl_form: str = field(default="distance", metadata={
        "help": "'distance': mean (s-t)^T G (s-t) (CL-CLIP's code); 'cosine': mean 1 - s^T G t / (|s|_G |t|_G) "
                "(the GeoDL paper)."})
    geodl_subspace_dim: int | None = field(default=None, metadata={
        "help": "PCA subspace dimension; null = min(n, D) - 2 as in the official code (clipped to [1, n-1])."})
    geodl_center: bool = field(default=True, metadata={"help": "Centre features on the batch mean before PCA."})

    def __post_init__(self):
        if self.geodl_weight < 0:
            raise ValueError(f"geodl_weight must be >= 0, got {self.geodl_weight}.")
        self.geodl_terms = str(self.geodl_terms).lower()
        if self.geodl_terms not in GEODL_TERMS:
            raise ValueError(f"geodl_terms must be one of {GEODL_TERMS}, got {self.geodl_terms!r}.")
        self.geodl_form = str(self.geodl_form).lower()
        if self.geodl_form not in GEODL_FORMS:
            raise ValueError(f"geodl_form must be one of {GEODL_FORMS}, got {self.geodl_form!r}.")
        if self.geodl_subspace_dim is not None and self.geodl_subspace_dim < 1:
            raise ValueError(f"geodl_subspace_dim must be >= 1 or null, got {self.geodl_subspace_dim}.")
        super().__post_init__()
