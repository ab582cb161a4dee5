"""Time-lapse and video: optical flow, warping, propagation with temporal consistency."""
