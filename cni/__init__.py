"""netplane.cni"""
