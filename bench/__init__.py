"""netplane.bench"""
