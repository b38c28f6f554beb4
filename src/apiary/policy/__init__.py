"""apiary.policy"""
