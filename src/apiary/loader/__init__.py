"""apiary.loader"""
