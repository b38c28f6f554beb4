"""apiary.observe"""
