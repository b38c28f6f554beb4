"""apiary.testing"""
